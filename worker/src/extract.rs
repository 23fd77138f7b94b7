//! Reading the few fields the router needs from a JSON request body (`model`, `stream`,
//! `user`, `stream_options.include_usage`) in one linear pass, and rewriting `model` by
//! splicing bytes: the rest of the body is never re-serialised, so every other byte
//! reaches the upstream unchanged, and the body is never copied (`Parts`).
use std::ops::Range;

use bytes::Bytes;

/// The routing-relevant head of a request body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RequestHead {
    pub model: Option<String>,
    /// Byte range of the `model` value, quotes included.
    pub model_range: Option<Range<usize>>,
    pub stream: bool,
    pub user: Option<String>,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: Option<bool>,
    /// Byte range of the `stream_options` value, when present.
    pub stream_options_range: Option<Range<usize>>,
    /// Byte offset of the closing `}` of the top-level object.
    pub object_end: usize,
}

const MAX_DEPTH: usize = 256;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

type R<T> = Result<T, String>;

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> R<u8> {
        self.b
            .get(self.i)
            .copied()
            .ok_or_else(|| "unexpected end of JSON".to_string())
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.i))
        }
    }

    /// A string starting at `self.i`; returns the range including the quotes.
    fn string(&mut self) -> R<Range<usize>> {
        let start = self.i;
        self.expect(b'"')?;
        loop {
            let rest = &self.b[self.i..];
            match memchr::memchr2(b'"', b'\\', rest) {
                None => return Err("unterminated string".into()),
                Some(off) => {
                    self.i += off;
                    if self.b[self.i] == b'\\' {
                        self.i += 2;
                        if self.i > self.b.len() {
                            return Err("unterminated string".into());
                        }
                    } else {
                        self.i += 1;
                        return Ok(start..self.i);
                    }
                }
            }
        }
    }

    fn value(&mut self, depth: usize) -> R<Range<usize>> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply".into());
        }
        let start = self.i;
        match self.peek()? {
            b'"' => self.string(),
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Ok(start..self.i);
                }
                loop {
                    self.ws();
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Ok(start..self.i);
                        }
                        _ => return Err(format!("expected `,` or `}}` at byte {}", self.i)),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Ok(start..self.i);
                }
                loop {
                    self.ws();
                    self.value(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Ok(start..self.i);
                        }
                        _ => return Err(format!("expected `,` or `]` at byte {}", self.i)),
                    }
                }
            }
            _ => {
                while let Some(c) = self.b.get(self.i) {
                    if matches!(c, b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z') {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                let lit = &self.b[start..self.i];
                let ok = matches!(lit, b"true" | b"false" | b"null")
                    || (!lit.is_empty() && matches!(lit[0], b'-' | b'0'..=b'9'));
                if !ok {
                    return Err(format!("invalid JSON value at byte {start}"));
                }
                Ok(start..self.i)
            }
        }
    }
}

fn decode_string(raw: &[u8]) -> R<String> {
    // raw includes the quotes.
    let inner = &raw[1..raw.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner)
            .map(str::to_owned)
            .map_err(|_| "invalid UTF-8 in string".into());
    }
    serde_json::from_slice::<String>(raw).map_err(|e| e.to_string())
}

/// Scan a request body: it must be one JSON object.
pub fn scan(body: &[u8]) -> Result<RequestHead, String> {
    let mut s = Scanner { b: body, i: 0 };
    let mut head = RequestHead::default();
    s.ws();
    if s.peek()? != b'{' {
        return Err("request body must be a JSON object".into());
    }
    s.i += 1;
    s.ws();
    if s.peek()? == b'}' {
        head.object_end = s.i;
        s.i += 1;
    } else {
        loop {
            s.ws();
            let key = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            let v = s.value(1)?;
            let key = &body[key.start + 1..key.end - 1];
            let raw = &body[v.clone()];
            match key {
                b"model" => {
                    if raw.first() != Some(&b'"') {
                        return Err("`model` must be a string".into());
                    }
                    head.model = Some(decode_string(raw)?);
                    head.model_range = Some(v);
                }
                b"stream" => head.stream = raw == b"true",
                b"user" if raw.first() == Some(&b'"') => head.user = Some(decode_string(raw)?),
                b"stream_options" => {
                    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(raw) {
                        head.include_usage = m.get("include_usage").and_then(|v| v.as_bool());
                    }
                    head.stream_options_range = Some(v);
                }
                _ => {}
            }
            s.ws();
            match s.peek()? {
                b',' => s.i += 1,
                b'}' => {
                    head.object_end = s.i;
                    s.i += 1;
                    break;
                }
                _ => return Err(format!("expected `,` or `}}` at byte {}", s.i)),
            }
        }
    }
    s.ws();
    if s.i != body.len() {
        return Err(format!("unexpected data after the JSON object at byte {}", s.i));
    }
    Ok(head)
}

/// A request body as the pieces it goes out as: zero-copy slices of the client's bytes
/// around each edit, and the edits' own bytes. The upstream client writes the pieces with
/// one `writev` and never joins them, so rewriting the model of a 10 MB body copies none
/// of it (the join cost a copy of the body, and with jemalloc, which hands extents of
/// 8 MiB and more back at once, a page fault per 4 KiB of it).
#[derive(Debug, Clone, Default)]
pub struct Parts(Vec<Bytes>);

impl Parts {
    /// The body unchanged, as one piece.
    pub fn whole(body: Bytes) -> Self {
        Self(vec![body])
    }

    pub fn as_slice(&self) -> &[Bytes] {
        &self.0
    }

    /// Bytes in all pieces (the `content-length`).
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces joined (tests and benches; the request path never joins them).
    pub fn to_bytes(&self) -> Bytes {
        match self.0.as_slice() {
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        }
    }
}

/// Replace `range` of `body` with `with`: the pieces around it are slices of `body`.
pub fn splice(body: &Bytes, range: Range<usize>, with: &Bytes) -> Parts {
    if body[range.clone()] == with[..] {
        return Parts::whole(body.clone());
    }
    splice_many(body, &mut [(range, with.clone())])
}

/// Apply non-overlapping `edits` (range → replacement), copying none of `body`.
pub fn splice_many(body: &Bytes, edits: &mut [(Range<usize>, Bytes)]) -> Parts {
    edits.sort_by_key(|(r, _)| r.start);
    let mut parts = Vec::with_capacity(2 * edits.len() + 1);
    let mut at = 0;
    for (r, w) in edits.iter() {
        for piece in [body.slice(at..r.start), w.clone()] {
            if !piece.is_empty() {
                parts.push(piece);
            }
        }
        at = r.end;
    }
    if at < body.len() {
        parts.push(body.slice(at..));
    }
    Parts(parts)
}

/// The edit that makes an OpenAI streaming request ask for a final usage chunk
/// (`stream_options.include_usage = true`), keeping any other stream options.
pub fn include_usage_edit(body: &[u8], head: &RequestHead) -> (Range<usize>, Bytes) {
    match &head.stream_options_range {
        Some(r) => {
            let mut m = match serde_json::from_slice::<serde_json::Value>(&body[r.clone()]) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            m.insert("include_usage".into(), serde_json::Value::Bool(true));
            (r.clone(), Bytes::from(serde_json::Value::Object(m).to_string()))
        }
        None => (
            head.object_end..head.object_end,
            Bytes::from_static(br#","stream_options":{"include_usage":true}"#),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_and_rewrites_model_only() {
        let body = br#" {"messages":[{"role":"user","content":"a \"model\": x"}], "model" : "gpt-4o", "stream":true,"user":"u\u00e9","stream_options":{"include_usage":true}} "#;
        let h = scan(body).unwrap();
        assert_eq!(h.model.as_deref(), Some("gpt-4o"));
        assert!(h.stream);
        assert_eq!(h.user.as_deref(), Some("u\u{e9}"));
        assert_eq!(h.include_usage, Some(true));
        let b = Bytes::from_static(body);
        let out = splice(
            &b,
            h.model_range.clone().unwrap(),
            &Bytes::from_static(br#""real-model""#),
        );
        let expect = String::from_utf8_lossy(body).replace(r#""gpt-4o""#, r#""real-model""#);
        assert_eq!(String::from_utf8_lossy(&out.to_bytes()), expect);
        assert_eq!(out.len(), expect.len());
        // The pieces around the edit are the client's bytes, not copies of them.
        assert_eq!(out.as_slice()[0].as_ptr(), b.as_ptr());
        assert_eq!(out.as_slice().len(), 3);
        // Unchanged value: the body itself.
        let same = splice(&b, h.model_range.unwrap(), &Bytes::from_static(br#""gpt-4o""#));
        assert_eq!(same.as_slice().len(), 1);
        assert_eq!(same.as_slice()[0].as_ptr(), b.as_ptr());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"{"[..],
            b"",
            b"[]",
            b"{\"model\":}",
            b"{\"a\":1,}",
            b"{\"a\":1} x",
            b"{\"model\":1}",
            b"{\"a\":\"x}",
        ] {
            assert!(scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let h = scan(b"{\"a\":[1,2,{\"b\":null}],\"c\":-1.5e3}").unwrap();
        assert_eq!(h.model, None);
    }

    #[test]
    fn include_usage_round_trip() {
        let body = Bytes::from_static(br#"{"model":"m","stream":true}"#);
        let h = scan(&body).unwrap();
        let mut edits = vec![
            include_usage_edit(&body, &h),
            (h.model_range.clone().unwrap(), Bytes::from_static(b"\"x\"")),
        ];
        let out = splice_many(&body, &mut edits).to_bytes();
        assert_eq!(
            &out[..],
            br#"{"model":"x","stream":true,"stream_options":{"include_usage":true}}"#
        );
        let body = Bytes::from_static(br#"{"model":"m","stream_options":{"include_usage":false,"a":1}}"#);
        let h = scan(&body).unwrap();
        let mut edits = vec![include_usage_edit(&body, &h)];
        let v: serde_json::Value =
            serde_json::from_slice(&splice_many(&body, &mut edits).to_bytes()).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "a": 1})
        );
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_serde(s in "\\PC{0,40}", n in proptest::num::i64::ANY) {
            let v = serde_json::json!({"x": [n, {"y": s.clone()}], "model": s, "stream": false});
            let body = serde_json::to_vec(&v).unwrap();
            let h = scan(&body).unwrap();
            proptest::prop_assert_eq!(h.model.as_deref(), v["model"].as_str());
        }
    }
}
