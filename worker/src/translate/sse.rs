//! A bounded SSE reader for upstream streams cut into arbitrary reads, and the writers
//! for translated events.
use serde_json::Value;

use super::{upstream, Result};

/// The largest SSE event (its lines and data together) a stream translator holds; a
/// longer one fails the stream. Real events are a few hundred bytes: deltas are small,
/// and Anthropic's `message_start` carries an empty message.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One dispatched event: its `event:` name (empty when none) and its data lines joined
/// with `\n`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Event {
    pub name: String,
    pub data: Vec<u8>,
}

/// Splits bytes into lines (LF, CRLF or CR, as the SSE spec allows) and lines into
/// events, keeping one incomplete line and one incomplete event.
#[derive(Debug, Default)]
pub(super) struct Reader {
    line: Vec<u8>,
    event: Event,
    has_data: bool,
    /// The last byte seen was a CR: an LF right after it ends nothing.
    after_cr: bool,
}

impl Reader {
    /// Reads `input`, appending each completed event to `events`.
    pub fn push(&mut self, mut input: &[u8], events: &mut Vec<Event>) -> Result<()> {
        while !input.is_empty() {
            if self.after_cr && input[0] == b'\n' {
                input = &input[1..];
                self.after_cr = false;
                continue;
            }
            self.after_cr = false;
            match memchr::memchr2(b'\n', b'\r', input) {
                Some(i) => {
                    self.append(&input[..i])?;
                    self.after_cr = input[i] == b'\r';
                    input = &input[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, events);
                    self.line = line;
                    self.line.clear();
                }
                None => {
                    self.append(input)?;
                    input = &[];
                }
            }
        }
        Ok(())
    }

    /// The end of the stream: a last event not followed by a blank line still counts.
    pub fn finish(&mut self, events: &mut Vec<Event>) -> Result<()> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, events);
        }
        self.line_done(b"", events);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if self.line.len() + self.event.data.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(upstream(format!(
                "an SSE event longer than {MAX_EVENT_BYTES} bytes"
            )));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.event));
            }
            self.event = Event::default();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return; // a comment
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.event.name = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if self.has_data {
                    self.event.data.push(b'\n');
                }
                self.event.data.extend_from_slice(value);
                self.has_data = true;
            }
            _ => {} // id, retry, unknown fields: nothing to translate
        }
    }
}

/// `data: <json>\n\n` (OpenAI Chat Completions chunks).
pub(super) fn write_data(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

/// `event: <name>\ndata: <json>\n\n` (Anthropic and Responses events).
pub(super) fn write_event(out: &mut Vec<u8>, name: &str, v: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    write_data(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut r = Reader::default();
        let mut ev = Vec::new();
        for c in chunks {
            r.push(c, &mut ev).unwrap();
        }
        r.finish(&mut ev).unwrap();
        ev
    }

    #[test]
    fn translate_sse_line_endings_and_splits() {
        let want = vec![
            Event {
                name: "a".into(),
                data: b"1\n2".to_vec(),
            },
            Event {
                name: String::new(),
                data: b"x".to_vec(),
            },
        ];
        for text in [
            &b"event: a\ndata: 1\ndata:2\n\n: c\ndata: x\n\n"[..],
            b"event: a\r\ndata: 1\r\ndata:2\r\n\r\ndata: x",
            b"event: a\rdata: 1\rdata:2\r\rdata: x\r\r",
        ] {
            assert_eq!(read_all(&[text]), want);
            for cut in 0..text.len() {
                assert_eq!(read_all(&[&text[..cut], &text[cut..]]), want, "cut at {cut}");
            }
            let bytes: Vec<&[u8]> = text.chunks(1).collect();
            assert_eq!(read_all(&bytes), want);
        }
    }

    #[test]
    fn translate_sse_event_limit() {
        let mut r = Reader::default();
        let mut ev = Vec::new();
        r.push(b"data: ", &mut ev).unwrap();
        let big = vec![b'x'; MAX_EVENT_BYTES];
        assert!(r.push(&big, &mut ev).is_err());
    }
}
