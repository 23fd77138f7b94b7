//! Undo, in what the client sees, the `stream_options.include_usage` the worker injected
//! into an OpenAI streaming request: the usage-only event (top-level `choices` an empty
//! array and `usage` an object) is dropped, and a top-level `usage` whose value is `null`
//! is removed with its separating comma. Both are decided on the event's JSON as a
//! conformant parser reads it ([`crate::toplevel`]): any white space, member order and key
//! escapes.
//!
//! The stripper works on complete SSE events (an event ends with a blank line; lines end
//! with `\n` or `\r\n`; `data:` with or without a space). Complete events go out as soon
//! as they arrive; only an incomplete trailing event is held back until its end comes,
//! up to [`MAX_HELD_EVENT`] bytes. Past that it goes out unchanged (counted in
//! [`OVERSIZE_EVENTS`]). An event with several `data:` lines, or one that is not a JSON
//! object, is passed through unchanged.
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use memchr::memmem::Finder;
use std::sync::LazyLock;

use crate::toplevel::{Key, Member, TopLevel};

/// Longest incomplete event held back while waiting for its end.
pub const MAX_HELD_EVENT: usize = 256 * 1024;

/// Events that went out unchanged because they grew past [`MAX_HELD_EVENT`] before
/// they ended (process-wide).
pub static OVERSIZE_EVENTS: AtomicU64 = AtomicU64::new(0);

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"usage"));
static ASCII_ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u00"));

/// Whether `b` may hold a key that reads `usage`: either the bytes `usage`, or an
/// escaped ASCII character (a key's letters can only be escaped as `\u00XX`; other
/// escapes decode to punctuation or control characters). False says for sure there is
/// none, whatever `b` is part of.
pub fn may_have_usage_key(b: &[u8]) -> bool {
    USAGE.find(b).is_some() || ASCII_ESCAPE.find(b).is_some()
}

/// Index just past the end of the first event (its blank line) in `b`, if any.
///
/// Walks the line ends from the front and stops at the first blank line, so splitting
/// a chunk into its events reads each byte once (two searches for `\n\n` and `\n\r\n`
/// over the rest of the chunk, per event, read it once per event).
fn first_event_end(b: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', b).find_map(|p| match b[p + 1..] {
        [b'\n', ..] => Some(p + 2),
        [b'\r', b'\n', ..] => Some(p + 3),
        _ => None,
    })
}

/// Index just past the end of the last complete event in `b[from..]`, if any.
fn last_event_end(b: &[u8], from: usize) -> Option<usize> {
    memchr::memrchr_iter(b'\n', &b[from..])
        .map(|i| from + i)
        .find_map(|p| {
            let blank = matches!(b[..p], [.., b'\n'] | [.., b'\n', b'\r']);
            blank.then_some(p + 1)
        })
}

/// The stripper of one stream.
#[derive(Debug)]
pub struct Stripper {
    /// The incomplete trailing event.
    held: Vec<u8>,
    /// Passing an oversized event through until its end: how its last bytes ended
    /// (0: mid-line, 1: `\n`, 2: `\n\r`).
    passing: Option<u8>,
    reader: TopLevel,
    members: Vec<Member>,
}

impl Default for Stripper {
    fn default() -> Self {
        Self::new()
    }
}

impl Stripper {
    pub fn new() -> Self {
        Self {
            held: Vec::new(),
            passing: None,
            reader: TopLevel::new(false),
            members: Vec::new(),
        }
    }

    /// Nothing is held back.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The stream ended: what was held back (an event without its blank line), as is.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.held)))
    }

    /// What the client gets of the next upstream chunk (possibly nothing yet).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        let mut out = Vec::new();
        let mut chunk = chunk;
        if let Some(state) = self.passing {
            match boundary_after(&chunk, state) {
                Ok(end) => {
                    self.passing = None;
                    if end == chunk.len() {
                        return chunk;
                    }
                    out.extend_from_slice(&chunk[..end]);
                    chunk = chunk.slice(end..);
                }
                Err(state) => {
                    self.passing = Some(state);
                    return chunk;
                }
            }
        }
        if self.held.is_empty() && out.is_empty() {
            // The common case: the chunk ends with an event's end and holds no usage key.
            let ends = chunk.ends_with(b"\n\n") || chunk.ends_with(b"\n\r\n");
            if ends && !may_have_usage_key(&chunk) {
                return chunk;
            }
            let end = last_event_end(&chunk, 0).unwrap_or(0);
            if end == chunk.len() {
                return match self.strip_events(&chunk, &mut out) {
                    true => Bytes::from(out),
                    false => chunk,
                };
            }
            if !self.strip_events(&chunk[..end], &mut out) {
                out.clear();
                out.extend_from_slice(&chunk[..end]);
            }
            self.hold(&chunk[end..], &mut out);
            return Bytes::from(out);
        }
        // Only the last bytes of what is held can start the blank line: each byte is
        // searched once, however many pieces an event comes in.
        let from = self.held.len().saturating_sub(2);
        self.held.extend_from_slice(&chunk);
        let held = std::mem::take(&mut self.held);
        let end = last_event_end(&held, from).unwrap_or(0);
        if !self.strip_events(&held[..end], &mut out) {
            out.extend_from_slice(&held[..end]);
        }
        let mut held = held;
        held.drain(..end);
        let rest = std::mem::take(&mut held);
        self.held = held;
        self.hold(&rest, &mut out);
        Bytes::from(out)
    }

    /// Keep `rest` (an incomplete event) unless it is too long: then it goes to `out`.
    fn hold(&mut self, rest: &[u8], out: &mut Vec<u8>) {
        if self.held.len() + rest.len() > MAX_HELD_EVENT {
            OVERSIZE_EVENTS.fetch_add(1, Ordering::Relaxed);
            out.append(&mut self.held);
            out.extend_from_slice(rest);
            let state = match rest {
                [.., b'\n', b'\r'] => 2,
                [.., b'\n'] => 1,
                _ => 0,
            };
            self.passing = Some(state);
        } else {
            self.held.extend_from_slice(rest);
        }
    }

    /// Append `events` (complete events) to `out` with the injected usage removed.
    /// Returns false, with `out` untouched, when nothing needs to change.
    fn strip_events(&mut self, events: &[u8], out: &mut Vec<u8>) -> bool {
        if !may_have_usage_key(events) {
            return false;
        }
        let start = out.len();
        let mut changed = false;
        let mut rest = events;
        while !rest.is_empty() {
            let end = first_event_end(rest).unwrap_or(rest.len());
            let (event, tail) = rest.split_at(end);
            changed |= self.strip_event(event, out);
            rest = tail;
        }
        if !changed {
            out.truncate(start);
        }
        changed
    }

    /// Append one event, stripped, to `out`; whether it changed.
    fn strip_event(&mut self, event: &[u8], out: &mut Vec<u8>) -> bool {
        let Some((json_at, json)) = self.single_data_line(event) else {
            out.extend_from_slice(event);
            return false;
        };
        if !may_have_usage_key(json) {
            out.extend_from_slice(event);
            return false;
        }
        if let Some(cut) = lone_null_usage_last(json) {
            out.extend_from_slice(&event[..json_at + cut.start]);
            out.extend_from_slice(&event[json_at + cut.end..]);
            return true;
        }
        self.reader.reset();
        self.members.clear();
        let members = &mut self.members;
        self.reader.feed(json, &mut |m: &Member| members.push(*m));
        if !self.reader.is_done() {
            out.extend_from_slice(event);
            return false;
        }
        let last = |k: Key| self.members.iter().rev().find(|m| m.key == k);
        let usage = last(Key::Usage).map(|m| m.first);
        let no_choices = last(Key::Choices).is_some_and(|m| m.first == b'[' && m.empty);
        if usage == Some(b'{') && no_choices {
            // Blank lines before the event are not part of it: they stay, so that what the
            // client gets does not depend on whether they came in the same read as the
            // event (a fuzz finding: `\n\n\r\n` read whole or cut after `\n\n`).
            let lead = event.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
            out.extend_from_slice(&event[..lead]);
            return true;
        }
        if usage != Some(b'n') {
            out.extend_from_slice(event);
            return false;
        }
        // Remove every `usage` member (the last is null, so the object reads as without
        // one): a run of them before the first kept member goes with the separators up
        // to that member's key; any other goes with the separator before it.
        let m = &self.members;
        let first_kept = m.iter().position(|m| m.key != Key::Usage);
        let mut at = 0;
        for (i, mem) in m.iter().enumerate() {
            if mem.key != Key::Usage {
                continue;
            }
            let (from, to) = match first_kept {
                Some(k) if i < k => (mem.key_start, m[k].key_start),
                Some(_) => (m[i - 1].value_end, mem.value_end),
                None => (m[0].key_start, mem.value_end),
            };
            let (from, to) = (json_at + from, json_at + to);
            if from > at {
                out.extend_from_slice(&event[at..from]);
            }
            at = at.max(to);
        }
        out.extend_from_slice(&event[at..]);
        true
    }

    /// The one `data:` line of an event: where its value starts in the event, and the
    /// value. `None` when the event has no or several `data:` lines.
    fn single_data_line<'a>(&self, event: &'a [u8]) -> Option<(usize, &'a [u8])> {
        let mut found = None;
        let mut at = 0;
        while at < event.len() {
            let end = memchr::memchr(b'\n', &event[at..]).map_or(event.len(), |i| at + i + 1);
            if let Some(v) = event[at..end].strip_prefix(b"data:") {
                if found.is_some() {
                    return None;
                }
                found = Some((at + 5, v));
            }
            at = end;
        }
        found
    }
}

/// The shape of almost every chunk of a stream whose `include_usage` the worker injected:
/// `{…,"usage":null}`, with `usage` written once, unescaped, as the last member. Found by
/// reading back from the end, without the general reader: the bytes to remove (what the
/// reader's path removes: from the end of the previous value, or from the key when it is
/// the only member, to the end of `null`), or `None` for anything else, which takes the
/// general path.
///
/// Why reading back is exact for a JSON document: the last `}` closes the top-level
/// object and the `l` before it cannot be inside a string, so `null` is the last value;
/// the `"usage"` before its `:` is a key whose opening quote is not escaped when a `,` or
/// `{` (not a `\`) precedes it; and with no other `usage` bytes and no `\u00` escape in
/// the document there is no other `usage` key, so this is the last and only one.
fn lone_null_usage_last(json: &[u8]) -> Option<std::ops::Range<usize>> {
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let back = |mut i: usize| {
        while i > 0 && ws(json[i - 1]) {
            i -= 1;
        }
        i
    };
    let end = back(json.len());
    let i = end.checked_sub(1).filter(|&i| json[i] == b'}')?;
    let i = back(i);
    let null_end = i;
    let i = i.checked_sub(4).filter(|&i| &json[i..null_end] == b"null")?;
    let i = back(i).checked_sub(1).filter(|&i| json[i] == b':')?;
    let key_end = back(i);
    let key_start = key_end
        .checked_sub(7)
        .filter(|&k| &json[k..key_end] == b"\"usage\"")?;
    let before = back(key_start).checked_sub(1)?;
    let from = match json[before] {
        b',' => back(before),
        b'{' => key_start,
        _ => return None,
    };
    let mut usage = USAGE.find_iter(json);
    if usage.next().is_none() || usage.next().is_some() || ASCII_ESCAPE.find(json).is_some() {
        return None;
    }
    Some(from..null_end)
}

/// Where the event being passed through ends in `b` (just past its blank line), given
/// how the bytes before `b` ended; else how `b` ends.
fn boundary_after(b: &[u8], mut state: u8) -> Result<usize, u8> {
    for (i, &c) in b.iter().enumerate() {
        state = match (state, c) {
            (1 | 2, b'\n') => return Ok(i + 1),
            (1, b'\r') => 2,
            (_, b'\n') => 1,
            _ => 0,
        };
    }
    Err(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Stripper::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.feed(Bytes::copy_from_slice(c)));
        }
        if let Some(rest) = s.finish() {
            out.extend_from_slice(&rest);
        }
        out
    }

    #[test]
    fn drops_the_usage_event_and_null_members_in_any_layout() {
        let stream = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n\
data:{ \"usage\" : null , \"choices\" : [ {\"delta\":{}} ] }\r\n\r\n\
data: {\"usag\\u0065\" : { \"total_tokens\" : 3 } , \"choices\" : [ ] }\n\n\
data: {\"usage\":null}\n\n\
data: [DONE]\n\n";
        let want = "data: {\"choices\":[{\"delta\":{}}]}\n\n\
data:{ \"choices\" : [ {\"delta\":{}} ] }\r\n\r\n\
data: {}\n\n\
data: [DONE]\n\n";
        for cut in 0..stream.len() {
            let out = run(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(String::from_utf8_lossy(&out), want, "cut at {cut}");
        }
    }

    #[test]
    fn complete_events_are_not_held_and_chunks_without_usage_are_not_copied() {
        let mut s = Stripper::new();
        let c = Bytes::from_static(b"data: {\"choices\":[{}]}\n\n");
        let out = s.feed(c.clone());
        assert_eq!(out.as_ptr(), c.as_ptr());
        let out = s.feed(Bytes::from_static(
            b"data: {\"choices\":[{}],\"usage\":null}\n\ndata: {\"cho",
        ));
        assert_eq!(&out[..], b"data: {\"choices\":[{}]}\n\n");
        assert!(!s.is_empty());
        let out = s.feed(Bytes::from_static(b"ices\":[],\"usage\":{\"a\":1}}\n\n"));
        assert!(out.is_empty());
        assert!(s.is_empty());
    }

    /// The events of an SSE text, each as its data (a JSON value re-serialised by
    /// serde_json, or the raw data), events without data left out.
    fn events(text: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(text);
        let mut out = Vec::new();
        let mut data: Option<String> = None;
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                out.extend(data.take());
                continue;
            }
            if let Some(d) = line.strip_prefix("data:") {
                data = Some(match serde_json::from_str::<serde_json::Value>(d) {
                    Ok(v) => v.to_string(),
                    Err(_) => d.trim().to_string(),
                });
            }
        }
        out.extend(data);
        out
    }

    proptest::proptest! {
        /// Streams of generated OpenAI chunks in any serialisation (white space, member
        /// order, key escapes, duplicate `usage`), framed with LF or CRLF, `data:` with
        /// or without a space, cut into reads anywhere: parsed event by event with
        /// serde_json, the stripped stream is the expected one (the usage-only event
        /// gone, `usage: null` members gone, everything else equal).
        #[test]
        fn stripped_stream_is_what_serde_expects(seed in 1u64.., cuts in proptest::collection::vec(0usize..4000, 0..10)) {
            use serde_json::Value;
            let mut r = crate::toplevel::testgen::Rng(seed);
            let (text, docs) = crate::account::tests::sse_stream(&mut r);
            let mut want = Vec::new();
            for d in docs {
                let Value::Object(mut m) = d else { unreachable!() };
                let no_choices = m.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty);
                match m.get("usage") {
                    Some(Value::Object(_)) if no_choices => continue,
                    Some(Value::Null) => {
                        m.remove("usage");
                    }
                    _ => {}
                }
                want.push(Value::Object(m).to_string());
            }
            want.push("[DONE]".to_string());
            let mut s = Stripper::new();
            let mut out = Vec::new();
            for c in crate::account::tests::reads(&text, &cuts) {
                out.extend_from_slice(&s.feed(c));
            }
            out.extend(s.finish().into_iter().flatten());
            proptest::prop_assert_eq!(events(&out), want, "{}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn the_common_null_usage_is_found_from_the_end_and_nothing_else_is() {
        let cut =
            |j: &str| lone_null_usage_last(j.as_bytes()).map(|r| format!("{}{}", &j[..r.start], &j[r.end..]));
        assert_eq!(
            cut(r#" {"id":"x","choices":[{"delta":{}}],"usage":null}"#).as_deref(),
            Some(r#" {"id":"x","choices":[{"delta":{}}]}"#)
        );
        assert_eq!(
            cut("{\"a\":1 ,\n \"usage\" : null }\r\n").as_deref(),
            Some("{\"a\":1 }\r\n")
        );
        assert_eq!(cut(r#"{ "usage":null}"#).as_deref(), Some("{ }"));
        for general in [
            r#"{"a":{"usage":null}}"#,
            r#"{"usage":null,"a":1}"#,
            r#"{"usage":{"x":1},"usage":null}"#,
            r#"{"a":"usage","usage":null}"#,
            r#"{"x\"usage":null}"#,
            r#"{"a":"\u0041","usage":null}"#,
            r#"{"a":1,"usage":nul}"#,
            r#"[{"usage":null}]"#,
            "",
            "}",
        ] {
            assert_eq!(cut(general), None, "{general}");
        }
    }

    #[test]
    fn an_oversized_event_passes_through_unchanged() {
        let big = format!(
            "data: {{\"choices\":[],\"x\":\"{}\",\"usage\":{{}}}}\n\n",
            "a".repeat(MAX_HELD_EVENT)
        );
        let next = b"data: {\"choices\":[],\"usage\":{}}\n\ndata: [DONE]\n\n";
        let before = OVERSIZE_EVENTS.load(Ordering::Relaxed);
        let (a, b) = big.as_bytes().split_at(MAX_HELD_EVENT / 2);
        let (b, c) = b.split_at(b.len() - 1);
        let mut whole = b.to_vec();
        whole.extend_from_slice(c);
        let out = run(&[a, b, c, next]);
        assert_eq!(String::from_utf8_lossy(&out), format!("{big}data: [DONE]\n\n"));
        assert!(OVERSIZE_EVENTS.load(Ordering::Relaxed) > before);
    }
}
