//! Getting token counts from OpenAI streams the client did not ask usage for: ask the
//! upstream anyway (`stream_options.include_usage=true`, spliced into the body bytes),
//! then take the usage-only chunk (`"choices":[]` + `usage`) and the `"usage":null`
//! fields it adds to every other chunk back out, so the client receives exactly the
//! bytes it would have received without the option.
use bytes::{Bytes, BytesMut};

use crate::extract::{self, RequestHead};

const OPTION: &[u8] = br#"{"include_usage":true}"#;
const USAGE_NULL: &[u8] = br#","usage":null"#;

/// The body to send upstream when usage must be injected (OpenAI stream whose client
/// did not set `include_usage: true`), with its re-scanned head; `None` = send as is.
pub fn inject(body: &Bytes, head: &RequestHead) -> Option<(Bytes, RequestHead)> {
    if !head.stream || head.include_usage == Some(true) {
        return None;
    }
    let new = match &head.stream_options_range {
        // `include_usage: false` (or absent) inside an object: the option object is
        // replaced; it has no other field that changes the response.
        Some(r) if body.get(r.start) == Some(&b'{') => extract::splice(body, r.clone(), OPTION),
        Some(_) => return None, // `stream_options: null` or a non-object: leave it alone
        None => {
            let end = head.object_end;
            if body.get(end) != Some(&b'}') {
                return None;
            }
            let mut out = Vec::with_capacity(body.len() + 40);
            out.extend_from_slice(&body[..end]);
            out.extend_from_slice(br#","stream_options":"#);
            out.extend_from_slice(OPTION);
            out.extend_from_slice(&body[end..]);
            Bytes::from(out)
        }
    };
    let head = extract::scan(&new).ok()?;
    Some((new, head))
}

/// Rewrites an SSE byte stream event by event; holds back an unfinished event.
#[derive(Debug, Default)]
pub struct UsageStripper {
    buf: BytesMut,
}

/// End of the first complete event in `b` (index after its blank line).
fn event_end(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &b[from..]) {
        let nl = from + i;
        match b.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if b.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

fn is_usage_only(ev: &[u8]) -> bool {
    memchr::memmem::find(ev, br#""choices":[]"#).is_some()
        && memchr::memmem::find(ev, br#""usage":{"#).is_some()
}

fn rewrite(ev: &[u8], out: &mut BytesMut) {
    if is_usage_only(ev) {
        return;
    }
    let mut rest = ev;
    while let Some(i) = memchr::memmem::find(rest, USAGE_NULL) {
        out.extend_from_slice(&rest[..i]);
        rest = &rest[i + USAGE_NULL.len()..];
    }
    out.extend_from_slice(rest);
}

impl UsageStripper {
    /// The bytes to pass on for `chunk` (possibly none yet).
    pub fn push(&mut self, chunk: &Bytes) -> Option<Bytes> {
        // Fast path: whole events with nothing to strip pass through without a copy.
        if self.buf.is_empty()
            && (chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n"))
            && memchr::memmem::find(chunk, b"\"usage\"").is_none()
        {
            return Some(chunk.clone());
        }
        self.buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.buf) {
            let ev = self.buf.split_to(end);
            rewrite(&ev, &mut out);
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() {
            return None;
        }
        let ev = self.buf.split();
        let mut out = BytesMut::new();
        rewrite(&ev, &mut out);
        (!out.is_empty()).then(|| out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_and_rescans() {
        let b = Bytes::from_static(br#"{"model":"m","stream":true,"messages":[]}"#);
        let h = extract::scan(&b).unwrap();
        let (nb, nh) = inject(&b, &h).unwrap();
        assert_eq!(
            &nb[..],
            br#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(nh.include_usage, Some(true));
        assert_eq!(nh.model_range, h.model_range);

        let b =
            Bytes::from_static(br#"{"stream_options":{"include_usage":false},"model":"m","stream":true}"#);
        let (nb, nh) = inject(&b, &extract::scan(&b).unwrap()).unwrap();
        assert_eq!(
            &nb[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        assert_eq!(&nb[nh.model_range.unwrap()], br#""m""#);

        let b = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#);
        assert!(inject(&b, &extract::scan(&b).unwrap()).is_none());
        let b = Bytes::from_static(br#"{"model":"m"}"#);
        assert!(inject(&b, &extract::scan(&b).unwrap()).is_none());
    }

    #[test]
    fn strips_across_chunk_boundaries() {
        let with = "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                    data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n\
                    data: [DONE]\n\n";
        let without = "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                       data: [DONE]\n\n";
        for split in 0..with.len() {
            let mut s = UsageStripper::default();
            let mut got = Vec::new();
            for part in [&with[..split], &with[split..]] {
                if let Some(b) = s.push(&Bytes::copy_from_slice(part.as_bytes())) {
                    got.extend_from_slice(&b);
                }
            }
            if let Some(b) = s.finish() {
                got.extend_from_slice(&b);
            }
            assert_eq!(String::from_utf8(got).unwrap(), without, "split at {split}");
        }
    }
}
