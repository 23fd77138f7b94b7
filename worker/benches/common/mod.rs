//! What the hotpath and copies benches share: the request bodies they scan and rewrite.
use bytes::Bytes;

pub const SIZES: [(usize, &str); 3] = [(1 << 10, "1KB"), (100 << 10, "100KB"), (10 << 20, "10MB")];

/// A chat request whose size is dominated by one long message with some escapes.
pub fn body(size: usize) -> Bytes {
    let head = r#"{"model":"bench-model","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":""#;
    let tail = r#""}],"temperature":0.2,"stream":true,"user":"u-42"}"#;
    let unit = r#"Lorem ipsum dolor sit amet, \"quoted\" consectetur\nadipiscing elit. "#;
    let mut s = String::with_capacity(size + unit.len());
    s.push_str(head);
    while s.len() + tail.len() < size {
        s.push_str(unit);
    }
    s.push_str(tail);
    Bytes::from(s)
}
