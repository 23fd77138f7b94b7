//! An incremental reader of the top-level members of one JSON object, fed in chunks of
//! any size: the exact reading the usage scanner and the usage stripper need from an
//! upstream's response, in bounded memory.
//!
//! It reads what a conformant parser reads: keys are compared after unescaping
//! (`"usag\u0065"` is `usage`), white space may come anywhere JSON allows it, members come
//! in any order, and of duplicated keys the last one counts (serde_json, Python, JS, Go).
//! Only the top level is parsed; nested values are skipped by their brackets and strings.
//! A malformed document may be read in some way, but never makes the reader panic or
//! grow: what it keeps is the raw value of the last top-level `usage` and `message`
//! members, each up to [`MAX_CAPTURE`] bytes (a longer one is dropped and reads as
//! absent: real usage objects are a few hundred bytes), and, read by a second reader of
//! the same kind as it passes (never kept whole: it carries the whole answer), the
//! `usage` member of the last top-level `response` object (the Responses API's
//! `response.completed` event).

/// Largest raw value of a captured member (`usage`, `message`) that is kept.
pub const MAX_CAPTURE: usize = 64 * 1024;

/// The top-level keys the gateway cares about, compared after unescaping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Usage,
    Message,
    Choices,
    /// The Responses API's events carry their response object here.
    Response,
    Other,
}

/// One top-level member, as byte offsets from the start of the document (the first
/// byte fed since the last [`TopLevel::reset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub key: Key,
    /// The key's opening quote.
    pub key_start: usize,
    /// The value's first byte.
    pub value_start: usize,
    /// Just past the value's last byte.
    pub value_end: usize,
    /// The value's first byte: `{`, `[`, `"`, `n`, `t`, `f`, `-` or a digit.
    pub first: u8,
    /// An object or array with nothing but white space inside.
    pub empty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Before the document: white space, then `{`.
    Start,
    /// After `{`: white space, then a key or `}`.
    KeyOrEnd,
    /// After `,`: white space, then a key.
    Key,
    /// Inside a key.
    InKey,
    /// After a backslash in a key.
    KeyEsc,
    /// In a key's `\u` escape: hex digits read so far and their value.
    KeyHex(u8, u16),
    /// After a key: white space, then `:`.
    Colon,
    /// After `:`: white space, then a value.
    Value,
    /// Inside a top-level string value (`true`: after a backslash).
    Str(bool),
    /// A top-level number or literal.
    Scalar,
    /// Inside an object or array value.
    Nested,
    /// After a value: white space, then `,` or `}`.
    After,
    /// After the closing `}`: white space only.
    Done,
    /// Not a JSON object; nothing more is read.
    Bad,
}

/// A key, decoded as far as needed to tell the [`Key`]s apart.
#[derive(Clone, Copy, Debug, Default)]
struct KeyBuf {
    buf: [u8; 8],
    len: u8,
    /// Longer than any key of interest, or not ASCII.
    other: bool,
}

impl KeyBuf {
    fn push(&mut self, c: u8) {
        match self.buf.get_mut(usize::from(self.len)) {
            Some(slot) if !self.other => {
                *slot = c;
                self.len += 1;
            }
            _ => self.other = true,
        }
    }

    fn push_slice(&mut self, s: &[u8]) {
        if self.other || usize::from(self.len) + s.len() > self.buf.len() {
            self.other = true;
        } else {
            for &c in s {
                self.push(c);
            }
        }
    }

    fn key(&self) -> Key {
        if self.other {
            return Key::Other;
        }
        match &self.buf[..usize::from(self.len)] {
            b"usage" => Key::Usage,
            b"message" => Key::Message,
            b"choices" => Key::Choices,
            b"response" => Key::Response,
            _ => Key::Other,
        }
    }
}

/// The raw bytes of one member's value, bounded by [`MAX_CAPTURE`].
#[derive(Debug, Default)]
struct Capture {
    buf: Vec<u8>,
    present: bool,
    over: bool,
}

impl Capture {
    fn begin(&mut self) {
        self.buf.clear();
        self.present = true;
        self.over = false;
    }

    fn append(&mut self, s: &[u8]) {
        if self.over {
            return;
        }
        if self.buf.len() + s.len() > MAX_CAPTURE {
            self.over = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(s);
        }
    }

    fn get(&self) -> Option<&[u8]> {
        (self.present && !self.over).then_some(&self.buf[..])
    }
}

/// The reader. Feed it a document's bytes with [`TopLevel::feed`] in as many pieces as
/// they come; [`TopLevel::is_done`] says whether a complete object was read.
#[derive(Debug)]
pub struct TopLevel {
    st: St,
    /// Offset of the next byte fed.
    pos: usize,
    key: KeyBuf,
    key_start: usize,
    value_start: usize,
    first: u8,
    /// Bracket depth inside a container value.
    depth: u64,
    in_str: bool,
    esc: bool,
    /// A container value was opened and nothing but white space followed yet.
    open: bool,
    empty: bool,
    capture: bool,
    /// Which capture the current value goes to.
    capturing: Option<Key>,
    usage: Capture,
    message: Capture,
    /// Reads the value of the last top-level `response` member (made at the first one;
    /// only a top-level reader that captures has one, and it has none itself).
    response: Option<Box<TopLevel>>,
    /// Whether this reader reads `response` values (`new(true)`, not a nested reader).
    nest: bool,
    /// A `response` member was read (its reader holds its value's reading).
    response_present: bool,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

impl TopLevel {
    /// `capture`: keep the raw values of `usage` and `message` (the usage scanner); the
    /// stripper only needs the members' offsets.
    pub fn new(capture: bool) -> Self {
        Self {
            st: St::Start,
            pos: 0,
            key: KeyBuf::default(),
            key_start: 0,
            value_start: 0,
            first: 0,
            depth: 0,
            in_str: false,
            esc: false,
            open: false,
            empty: false,
            capture,
            capturing: None,
            usage: Capture::default(),
            message: Capture::default(),
            response: None,
            nest: capture,
            response_present: false,
        }
    }

    /// Ready for another document (keeps the capture buffers' memory).
    pub fn reset(&mut self) {
        self.st = St::Start;
        self.pos = 0;
        self.capturing = None;
        self.usage.present = false;
        self.usage.over = false;
        self.usage.buf.clear();
        self.message.present = false;
        self.message.over = false;
        self.message.buf.clear();
        self.response_present = false;
    }

    /// A complete object was read (and nothing but white space after it).
    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// The raw value of the last top-level `usage` member, once the document is done.
    pub fn usage(&self) -> Option<&[u8]> {
        self.is_done().then(|| self.usage.get()).flatten()
    }

    /// The raw value of the last top-level `message` member, once the document is done.
    pub fn message(&self) -> Option<&[u8]> {
        self.is_done().then(|| self.message.get()).flatten()
    }

    /// The `usage` member of the last top-level `response` member, when that is an object
    /// read whole, once the document is done.
    pub fn response_usage(&self) -> Option<&[u8]> {
        if !self.is_done() || !self.response_present {
            return None;
        }
        self.response.as_deref()?.usage()
    }

    fn capture_mut(&mut self, k: Key) -> Option<&mut Capture> {
        match k {
            Key::Usage => Some(&mut self.usage),
            Key::Message => Some(&mut self.message),
            _ => None,
        }
    }

    /// A captured member's value begins: whether `k` is captured.
    fn begin_capture(&mut self, k: Key) -> bool {
        if k == Key::Response {
            if !self.nest {
                return false;
            }
            self.response_present = true;
            self.response
                .get_or_insert_with(|| {
                    let mut r = Box::new(TopLevel::new(true));
                    r.nest = false;
                    r
                })
                .reset();
            return true;
        }
        match self.capture_mut(k) {
            Some(c) => {
                c.begin();
                true
            }
            None => false,
        }
    }

    /// More bytes of the value of captured member `k`.
    fn append_capture(&mut self, k: Key, s: &[u8]) {
        if k == Key::Response {
            if let Some(r) = self.response.as_mut() {
                r.feed(s, &mut |_| {});
            }
        } else if let Some(c) = self.capture_mut(k) {
            c.append(s);
        }
    }

    /// The value that started at `value_start` ends before `chunk[end]`.
    fn end_value(
        &mut self,
        chunk: &[u8],
        cap_from: &mut Option<usize>,
        end: usize,
        on_member: &mut impl FnMut(&Member),
    ) {
        if let (Some(from), Some(k)) = (cap_from.take(), self.capturing.take()) {
            self.append_capture(k, &chunk[from..end]);
        }
        let m = Member {
            key: self.key.key(),
            key_start: self.key_start,
            value_start: self.value_start,
            value_end: self.pos + end,
            first: self.first,
            empty: self.empty,
        };
        on_member(&m);
        self.st = St::After;
    }

    /// Read the next piece of the document; `on_member` is called for each top-level
    /// member as its value ends.
    pub fn feed(&mut self, chunk: &[u8], on_member: &mut impl FnMut(&Member)) {
        let n = chunk.len();
        let mut i = 0;
        // Start of the captured value's bytes in this chunk.
        let mut cap_from = self.capturing.map(|_| 0);
        while i < n {
            let c = chunk[i];
            match self.st {
                St::Start => {
                    if c == b'{' {
                        self.st = St::KeyOrEnd;
                    } else if !is_ws(c) {
                        self.st = St::Bad;
                    }
                    i += 1;
                }
                St::KeyOrEnd | St::Key => {
                    if c == b'"' {
                        self.key = KeyBuf::default();
                        self.key_start = self.pos + i;
                        self.st = St::InKey;
                    } else if c == b'}' && self.st == St::KeyOrEnd {
                        self.st = St::Done;
                    } else if !is_ws(c) {
                        self.st = St::Bad;
                    }
                    i += 1;
                }
                St::InKey => match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                    None => {
                        self.key.push_slice(&chunk[i..]);
                        i = n;
                    }
                    Some(j) => {
                        self.key.push_slice(&chunk[i..i + j]);
                        i += j;
                        self.st = if chunk[i] == b'"' { St::Colon } else { St::KeyEsc };
                        i += 1;
                    }
                },
                St::KeyEsc => {
                    self.st = St::InKey;
                    match c {
                        b'u' => self.st = St::KeyHex(0, 0),
                        b'"' | b'\\' | b'/' => self.key.push(c),
                        b'b' => self.key.push(8),
                        b'f' => self.key.push(12),
                        b'n' => self.key.push(b'\n'),
                        b'r' => self.key.push(b'\r'),
                        b't' => self.key.push(b'\t'),
                        _ => self.st = St::Bad,
                    }
                    i += 1;
                }
                St::KeyHex(k, acc) => {
                    let Some(d) = char::from(c).to_digit(16) else {
                        self.st = St::Bad;
                        continue;
                    };
                    // Four hex digits: no overflow of the u16.
                    let acc = (acc << 4) | d as u16;
                    if k == 3 {
                        // A key of interest is ASCII: anything else only has to differ.
                        match u8::try_from(acc) {
                            Ok(b) if b < 0x80 => self.key.push(b),
                            _ => self.key.other = true,
                        }
                        self.st = St::InKey;
                    } else {
                        self.st = St::KeyHex(k + 1, acc);
                    }
                    i += 1;
                }
                St::Colon => {
                    if c == b':' {
                        self.st = St::Value;
                    } else if !is_ws(c) {
                        self.st = St::Bad;
                    }
                    i += 1;
                }
                St::Value => {
                    if is_ws(c) {
                        i += 1;
                        continue;
                    }
                    self.value_start = self.pos + i;
                    self.first = c;
                    self.empty = false;
                    if self.capture {
                        let k = self.key.key();
                        if self.begin_capture(k) {
                            self.capturing = Some(k);
                            cap_from = Some(i);
                        }
                    }
                    match c {
                        b'"' => self.st = St::Str(false),
                        b'{' | b'[' => {
                            self.st = St::Nested;
                            self.depth = 1;
                            self.in_str = false;
                            self.esc = false;
                            self.open = true;
                        }
                        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => self.st = St::Scalar,
                        _ => self.st = St::Bad,
                    }
                    i += 1;
                }
                St::Str(esc) => {
                    if esc {
                        self.st = St::Str(false);
                        i += 1;
                        continue;
                    }
                    match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                        None => i = n,
                        Some(j) => {
                            i += j + 1;
                            if chunk[i - 1] == b'"' {
                                self.end_value(chunk, &mut cap_from, i, on_member);
                            } else {
                                self.st = St::Str(true);
                            }
                        }
                    }
                }
                St::Scalar => {
                    match chunk[i..]
                        .iter()
                        .position(|&c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                    {
                        // The delimiter is left for `After`.
                        Some(j) => {
                            i += j;
                            self.end_value(chunk, &mut cap_from, i, on_member);
                        }
                        None => i = n,
                    }
                }
                St::Nested => {
                    if self.in_str {
                        if self.esc {
                            self.esc = false;
                            i += 1;
                            continue;
                        }
                        match memchr::memchr2(b'"', b'\\', &chunk[i..]) {
                            None => i = n,
                            Some(j) => {
                                i += j + 1;
                                if chunk[i - 1] == b'"' {
                                    self.in_str = false;
                                } else {
                                    self.esc = true;
                                }
                            }
                        }
                        continue;
                    }
                    if self.open && !is_ws(c) {
                        self.open = false;
                        self.empty = matches!(c, b'}' | b']');
                    }
                    i += 1;
                    match c {
                        b'"' => self.in_str = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                self.end_value(chunk, &mut cap_from, i, on_member);
                            }
                        }
                        _ => {}
                    }
                }
                St::After => {
                    match c {
                        b',' => self.st = St::Key,
                        b'}' => self.st = St::Done,
                        c if is_ws(c) => {}
                        _ => self.st = St::Bad,
                    }
                    i += 1;
                }
                St::Done => {
                    if !is_ws(c) {
                        self.st = St::Bad;
                    }
                    i += 1;
                }
                St::Bad => i = n,
            }
        }
        if let (Some(from), Some(k)) = (cap_from, self.capturing) {
            self.append_capture(k, &chunk[from..n]);
        }
        self.pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(doc: &[u8], cuts: &[usize]) -> (Vec<Member>, TopLevel) {
        let mut r = TopLevel::new(true);
        let mut v = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain([&doc.len()]) {
            let c = c.clamp(at, doc.len());
            r.feed(&doc[at..c], &mut |m: &Member| v.push(*m));
            at = c;
        }
        (v, r)
    }

    #[test]
    fn reads_keys_after_unescaping_in_any_layout() {
        let doc = br#" { "a\\" : "x\"}\\" , "n": -1.5e3, "arr": [1, {"usage": {"p": 9}}, "]"],
            "mes\u0073age" : {"usage":{"input_tokens":2}}, "usag\u0065" :{"prompt_tokens":4} ,"choices" : [ ] } "#;
        for cut in 0..doc.len() {
            let (m, r) = members(doc, &[cut, cut + 3]);
            assert!(r.is_done());
            let keys: Vec<Key> = m.iter().map(|m| m.key).collect();
            assert_eq!(
                keys,
                [
                    Key::Other,
                    Key::Other,
                    Key::Other,
                    Key::Message,
                    Key::Usage,
                    Key::Choices
                ]
            );
            assert_eq!(r.usage().unwrap(), br#"{"prompt_tokens":4}"#);
            assert_eq!(r.message().unwrap(), br#"{"usage":{"input_tokens":2}}"#);
            let ch = m[5];
            assert!(ch.empty && ch.first == b'[');
            assert_eq!(&doc[ch.value_start..ch.value_end], b"[ ]");
            assert_eq!(&doc[m[1].value_start..m[1].value_end], b"-1.5e3");
        }
    }

    #[test]
    fn the_last_duplicate_counts_and_long_values_are_dropped() {
        let (_, r) = members(br#"{"usage":{"a":1},"usage":null}"#, &[]);
        assert_eq!(r.usage().unwrap(), b"null");
        let big = format!(r#"{{"usage":{{"a":1}},"usage":"{}"}}"#, "x".repeat(MAX_CAPTURE));
        let (_, r) = members(big.as_bytes(), &[10, 70_000]);
        assert!(r.is_done());
        assert_eq!(r.usage(), None);
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for bad in [
            &b"[1]"[..],
            b"{",
            b"{\"a\" 1}",
            b"{\"a\":1,}",
            b"{\"a\":1} x",
            b"{\"a\":}",
            b"{\"\\x\":1}",
            b"{\"\\u12g4\":1}",
        ] {
            let (_, r) = members(bad, &[]);
            assert!(!r.is_done(), "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(r.usage(), None);
        }
    }
}

/// Generated OpenAI-style documents in many serialisations, for the property tests of
/// the readers built on [`TopLevel`] (here, `account` and `strip`).
#[cfg(test)]
pub(crate) mod testgen {
    use serde_json::{json, Map, Value};

    /// A small deterministic generator (the property test supplies the seed).
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        pub fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
    }

    /// A token count: small, huge, beyond u64, or not an integer at all.
    fn count(r: &mut Rng) -> Value {
        match r.below(8) {
            0 => json!(u64::MAX - r.below(3)),
            1 => serde_json::from_str("18446744073709551616").unwrap_or(Value::Null),
            2 => json!(1.5),
            3 => json!(-3),
            4 => json!("12"),
            _ => json!(r.below(100_000)),
        }
    }

    /// An OpenAI (or, one time in four, Anthropic) usage object.
    pub fn usage(r: &mut Rng) -> Value {
        let mut m = Map::new();
        if r.chance(4) {
            for k in [
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ] {
                if !r.chance(3) {
                    m.insert(k.into(), count(r));
                }
            }
            return Value::Object(m);
        }
        for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            if !r.chance(5) {
                m.insert(k.into(), count(r));
            }
        }
        if r.chance(2) {
            m.insert(
                "prompt_tokens_details".into(),
                json!({"cached_tokens": count(r), "audio_tokens": 0}),
            );
        }
        if r.chance(2) {
            m.insert(
                "completion_tokens_details".into(),
                json!({"reasoning_tokens": count(r)}),
            );
        }
        Value::Object(m)
    }

    /// Text with quotes, backslashes, braces, the word usage, and non-ASCII.
    fn text(r: &mut Rng) -> String {
        const PIECES: [&str; 10] = [
            "hi",
            " ",
            "\"usage\":{",
            "\\",
            "}",
            "é",
            "\u{1F600}",
            "choices",
            "\n",
            "\"usage\":null",
        ];
        (0..r.below(8)).map(|_| PIECES[r.below(10) as usize]).collect()
    }

    /// A Responses API usage object (`response.usage`).
    pub fn responses_usage(r: &mut Rng) -> Value {
        let mut m = Map::new();
        for k in ["input_tokens", "output_tokens", "total_tokens"] {
            if !r.chance(5) {
                m.insert(k.into(), count(r));
            }
        }
        if r.chance(2) {
            m.insert("input_tokens_details".into(), json!({"cached_tokens": count(r)}));
        }
        if r.chance(2) {
            m.insert(
                "output_tokens_details".into(),
                json!({"reasoning_tokens": count(r)}),
            );
        }
        Value::Object(m)
    }

    /// A Responses API response object: `usage` absent, null or an object; a `usage` key
    /// nested in its output text or items sometimes.
    fn response_object(r: &mut Rng) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!("resp_1"));
        m.insert("object".into(), json!("response"));
        m.insert(
            "output".into(),
            json!([{"type": "message", "content": [{"type": "output_text", "text": text(r)}]}]),
        );
        if r.chance(4) {
            m.insert("metadata".into(), json!({"usage": usage(r)}));
        }
        match r.below(3) {
            0 => {}
            1 => {
                m.insert("usage".into(), Value::Null);
            }
            _ => {
                m.insert("usage".into(), responses_usage(r));
            }
        }
        Value::Object(m)
    }

    /// A Responses API answer (`stream`: one of its events), sometimes with a top-level
    /// `usage` too, which a conformant reading prefers.
    fn responses_document(r: &mut Rng, stream: bool) -> Value {
        let mut v = if !stream {
            response_object(r)
        } else {
            match r.below(3) {
                0 => json!({"type": "response.output_text.delta", "sequence_number": 3, "delta": text(r)}),
                1 => {
                    json!({"type": "response.created", "sequence_number": 0, "response": response_object(r)})
                }
                _ => {
                    json!({"type": "response.completed", "sequence_number": 9, "response": response_object(r)})
                }
            }
        };
        if stream && r.chance(8) {
            v["usage"] = if r.chance(2) { Value::Null } else { usage(r) };
        }
        v
    }

    /// A streamed chunk (`stream`) or a complete answer: `usage` is absent, null or an
    /// object; `choices` empty or not; sometimes an Anthropic `message_start`, sometimes a
    /// Responses API answer or event.
    pub fn document(r: &mut Rng, stream: bool) -> Value {
        if r.chance(6) {
            return responses_document(r, stream);
        }
        if r.chance(8) {
            return json!({"type": "message_start", "message": {"id": "m", "content": [], "usage": usage(r)}});
        }
        let mut m = Map::new();
        m.insert("id".into(), json!("chatcmpl-1"));
        m.insert(
            "object".into(),
            json!(if stream {
                "chat.completion.chunk"
            } else {
                "chat.completion"
            }),
        );
        m.insert("created".into(), json!(r.below(2_000_000_000)));
        let choices = if r.chance(3) {
            json!([])
        } else if stream {
            json!([{"index": 0, "delta": {"content": text(r)}, "finish_reason": null}])
        } else {
            json!([{"index": 0, "message": {"role": "assistant", "content": text(r)}, "finish_reason": "stop"}])
        };
        m.insert("choices".into(), choices);
        if r.chance(4) {
            m.insert(
                "system_fingerprint".into(),
                json!({"usage": usage(r), "x": [text(r)]}),
            );
        }
        match r.below(3) {
            0 => {}
            1 => {
                m.insert("usage".into(), Value::Null);
            }
            _ => {
                m.insert("usage".into(), usage(r));
            }
        }
        Value::Object(m)
    }

    /// `v` serialised with random white space (none that breaks an SSE line when
    /// `one_line`), random member order, random `\u` escapes in keys and, at the top
    /// level, sometimes an earlier duplicate `usage` that a conformant reader overrides.
    pub fn serialise(v: &Value, r: &mut Rng, one_line: bool) -> String {
        let mut out = String::new();
        write(&mut out, v, r, one_line, true);
        out
    }

    fn ws(out: &mut String, r: &mut Rng, one_line: bool) {
        const WS: [&str; 6] = ["", "", " ", "\t", "\n", "\r\n  "];
        let n = if one_line { 4 } else { 6 };
        out.push_str(WS[r.below(n) as usize]);
    }

    fn key(out: &mut String, k: &str, r: &mut Rng) {
        if !r.chance(3) {
            out.push_str(&Value::String(k.into()).to_string());
            return;
        }
        out.push('"');
        for c in k.chars() {
            match c {
                c if c.is_ascii_alphanumeric() && r.chance(2) => {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                }
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn write(out: &mut String, v: &Value, r: &mut Rng, one_line: bool, top: bool) {
        ws(out, r, one_line);
        match v {
            Value::Object(m) => {
                let mut members: Vec<(&String, &Value)> = m.iter().collect();
                for i in (1..members.len()).rev() {
                    members.swap(i, r.below(i as u64 + 1) as usize);
                }
                let mut all: Vec<(String, Value)> =
                    members.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                if top && r.chance(4) {
                    if let Some(real) = all.iter().position(|(k, _)| k == "usage") {
                        // An earlier duplicate: the real member stays the last `usage`.
                        let d = if r.chance(2) { Value::Null } else { usage(r) };
                        let at = r.below(real as u64 + 1) as usize;
                        all.insert(at, ("usage".into(), d));
                    }
                }
                out.push('{');
                let mut first = true;
                for (k, v) in &all {
                    if !first {
                        ws(out, r, one_line);
                        out.push(',');
                    }
                    first = false;
                    ws(out, r, one_line);
                    key(out, k, r);
                    ws(out, r, one_line);
                    out.push(':');
                    write(out, v, r, one_line, false);
                }
                ws(out, r, one_line);
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        ws(out, r, one_line);
                        out.push(',');
                    }
                    write(out, v, r, one_line, false);
                }
                ws(out, r, one_line);
                out.push(']');
            }
            v => out.push_str(&v.to_string()),
        }
        ws(out, r, one_line);
    }

    #[test]
    fn serialisations_read_back_as_the_value() {
        for seed in 1..500 {
            let mut r = Rng(seed);
            let v = document(&mut r, seed % 2 == 0);
            let s = serialise(&v, &mut r, seed % 3 == 0);
            let back: Value = serde_json::from_str(&s).unwrap();
            assert_eq!(back, v, "{s}");
            if seed % 3 == 0 {
                assert!(!s.contains('\n') && !s.contains('\r'));
            }
        }
    }
}
