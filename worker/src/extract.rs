//! Reading the few fields the router needs from a JSON request body (`model`, `stream`,
//! `user`, `stream_options.include_usage`) in one linear pass, and rewriting `model` by
//! splicing bytes: the rest of the body is never re-serialised, so every other byte
//! reaches the upstream unchanged, and the body is never copied (`Parts`).
//!
//! The scan reads the body as a conformant JSON parser does, because the upstream will:
//! keys are compared after unescaping (`"mo\u0064el"` is `model`), whitespace may come
//! anywhere and members in any order. It accepts exactly the JSON that serde_json accepts
//! (RFC 8259 grammar, valid escapes and UTF-8, paired surrogates, no raw control
//! characters, serde_json's nesting limit and its refusal of floats that overflow), so
//! the gateway and the upstream never read the same bytes differently: a watched field
//! that appears twice is refused, since parsers disagree about which copy wins (most
//! take the last). A differential proptest below holds it to serde_json's reading.
use std::{ops::Range, sync::LazyLock};

use bytes::Bytes;
use memchr::memmem::Finder;

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
    /// Byte range of the `stream_options` value (an object or `null`), when present.
    pub stream_options_range: Option<Range<usize>>,
    /// Byte offset of the closing `}` of the top-level object.
    pub object_end: usize,
}

/// Deepest nesting accepted, counting the top-level object as 1: serde_json's default
/// recursion limit (128) refuses the 128th nested container, so we do too. It also
/// bounds the scanner's own recursion (a few hundred bytes of stack per level).
pub const MAX_DEPTH: usize = 127;

/// The top-level members the gateway reads. A new field is one row here, one arm in
/// `scan` and one field in `RequestHead`; its duplicates are refused like the others'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Model,
    Stream,
    StreamOptions,
    User,
}

const WATCHED: [(&str, Field); 4] = [
    ("model", Field::Model),
    ("stream", Field::Stream),
    ("stream_options", Field::StreamOptions),
    ("user", Field::User),
];

/// A key longer than this (decoded) is none of the watched keys; escaped keys are decoded
/// into a buffer this big on the stack, not allocated.
const KEY_BUF: usize = 32;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

type R<T> = Result<T, String>;

/// A string's content between its quotes, and whether it has escapes.
#[derive(Clone, Copy)]
struct Key {
    inner_start: usize,
    inner_end: usize,
    escaped: bool,
}

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

    /// A string starting at `self.i`, validated as serde_json validates one.
    fn string(&mut self) -> R<Key> {
        self.expect(b'"')?;
        let inner_start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            let Some(off) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err("unterminated string".into());
            };
            if !segment_ok(&rest[..off]) {
                return Err(format!(
                    "control character or invalid UTF-8 in a string before byte {}",
                    self.i + off
                ));
            }
            self.i += off;
            if rest[off] == b'"' {
                self.i += 1;
                return Ok(Key {
                    inner_start,
                    inner_end: self.i - 1,
                    escaped,
                });
            }
            escaped = true;
            self.escape()?;
        }
    }

    /// One escape at `self.i` (the backslash). Surrogates must pair: serde_json refuses a
    /// lone one when it reads a string (as it does for every key and `Value` string).
    fn escape(&mut self) -> R<()> {
        let at = self.i;
        let bad = || format!("invalid escape at byte {at}");
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 2;
                Ok(())
            }
            Some(b'u') => {
                let n = hex4(self.b, self.i + 2).ok_or_else(bad)?;
                self.i += 6;
                match n {
                    0xDC00..=0xDFFF => Err(format!("lone surrogate at byte {at}")),
                    0xD800..=0xDBFF => {
                        let low = (self.b.get(self.i..self.i + 2) == Some(b"\\u"))
                            .then(|| hex4(self.b, self.i + 2))
                            .flatten();
                        match low {
                            Some(0xDC00..=0xDFFF) => {
                                self.i += 6;
                                Ok(())
                            }
                            _ => Err(format!("lone surrogate at byte {at}")),
                        }
                    }
                    _ => Ok(()),
                }
            }
            _ => Err(bad()),
        }
    }

    /// An object at `self.i` (its `{`), nested `depth` deep; `member` sees each key and the
    /// byte range of its value. Returns the object's range.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(Key, Range<usize>) -> R<()>,
    ) -> R<Range<usize>> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply".into());
        }
        let start = self.i;
        self.expect(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(start..self.i);
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(format!("expected a key at byte {}", self.i));
            }
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            let v = self.value(depth + 1)?;
            member(key, v)?;
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

    fn array(&mut self, depth: usize) -> R<Range<usize>> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply".into());
        }
        let start = self.i;
        self.expect(b'[')?;
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

    /// A value at `self.i` that would be nested `depth` deep if it is a container.
    fn value(&mut self, depth: usize) -> R<Range<usize>> {
        let start = self.i;
        match self.peek()? {
            b'"' => self.string().map(|_| start..self.i),
            b'{' => self.object(depth, |_, _| Ok(())),
            b'[' => self.array(depth),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(format!("invalid JSON value at byte {start}")),
        }
    }

    fn literal(&mut self, lit: &[u8]) -> R<Range<usize>> {
        let start = self.i;
        if self.b.get(start..start + lit.len()) != Some(lit) {
            return Err(format!("invalid JSON value at byte {start}"));
        }
        self.i += lit.len();
        Ok(start..self.i)
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while matches!(self.b.get(self.i), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - from
    }

    /// A number by RFC 8259's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> R<Range<usize>> {
        let start = self.i;
        let bad = || format!("invalid number at byte {start}");
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let int_digits = match self.b.get(self.i) {
            Some(b'0') => {
                self.i += 1;
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(bad()),
        };
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(bad());
            }
        }
        let mut exp = false;
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            exp = true;
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(bad());
            }
        }
        // Only an exponent or a long integer part can overflow an f64 (cold).
        if (exp || int_digits > 19) && serde_float_overflows(&self.b[start..self.i]) {
            return Err(format!("number out of range at byte {start}"));
        }
        Ok(start..self.i)
    }
}

/// Whether a string segment (between escapes and quotes) is valid: no raw control
/// characters and valid UTF-8. The common all-ASCII case is one branch-free pass that
/// the compiler vectorises; anything else is checked exactly. UTF-8 is checked per
/// segment, which is exact: `"` and `\` never occur inside a multi-byte sequence, and
/// outside strings the grammar admits ASCII only.
#[inline]
fn segment_ok(seg: &[u8]) -> bool {
    // 0x20..=0x7f map to 0..0x60; control characters and non-ASCII bytes do not.
    let printable_ascii = seg
        .chunks(32)
        .all(|c| c.iter().fold(true, |ok, &x| ok & (x.wrapping_sub(0x20) < 0x60)));
    printable_ascii || (!seg.iter().any(|&x| x < 0x20) && std::str::from_utf8(seg).is_ok())
}

fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let h = b.get(at..at + 4)?;
    let mut n = 0u16;
    for &c in h {
        let d = (c as char).to_digit(16)?;
        n = (n << 4) | d as u16;
    }
    Some(n)
}

/// Whether serde_json (without `float_roundtrip`, as we build it) refuses this number
/// (grammar already checked) as out of range. Its reading is approximate near f64::MAX,
/// so this follows its algorithm step by step rather than Rust's exact `parse`: the
/// first digits that fit a u64 are the significand, later integer digits raise the
/// exponent, later fraction digits are dropped, and the product overflowing is an error.
#[cold]
fn serde_float_overflows(num: &[u8]) -> bool {
    fn fits(sig: u64, d: u64) -> bool {
        !(sig > u64::MAX / 10 || (sig == u64::MAX / 10 && d > u64::MAX % 10))
    }
    let num = num.strip_prefix(b"-").unwrap_or(num);
    let mut it = num.iter().copied().peekable();
    let (mut sig, mut exponent, mut long) = (0u64, 0i32, false);
    while let Some(c @ b'0'..=b'9') = it.peek().copied() {
        it.next();
        let d = u64::from(c - b'0');
        if long || !fits(sig, d) {
            long = true;
            exponent = exponent.saturating_add(1);
        } else {
            sig = sig * 10 + d;
        }
    }
    if it.peek() == Some(&b'.') {
        it.next();
        let mut dropping = false;
        while let Some(c @ b'0'..=b'9') = it.peek().copied() {
            it.next();
            let d = u64::from(c - b'0');
            if dropping || !fits(sig, d) {
                dropping = true;
            } else {
                sig = sig * 10 + d;
                exponent = exponent.saturating_sub(1);
            }
        }
    }
    if matches!(it.peek(), Some(b'e' | b'E')) {
        it.next();
        let positive = match it.peek() {
            Some(b'-') => {
                it.next();
                false
            }
            Some(b'+') => {
                it.next();
                true
            }
            _ => true,
        };
        let mut e = 0i32;
        for c in it {
            let d = i32::from(c - b'0');
            if e > i32::MAX / 10 || (e == i32::MAX / 10 && d > i32::MAX % 10) {
                return sig != 0 && positive;
            }
            e = e * 10 + d;
        }
        exponent = if positive {
            exponent.saturating_add(e)
        } else {
            exponent.saturating_sub(e)
        };
    } else if !long && exponent == 0 {
        // An integer that fits a u64 (or a fraction): never a float overflow.
        return false;
    }
    let mut f = sig as f64;
    loop {
        match POW10.get(exponent.unsigned_abs() as usize) {
            Some(&pow) => {
                if exponent >= 0 {
                    f *= pow;
                    return f.is_infinite();
                }
                return false;
            }
            None => {
                if f == 0.0 {
                    return false;
                }
                if exponent >= 0 {
                    return true;
                }
                f /= 1e308;
                exponent += 308;
            }
        }
    }
}

/// 1e0..=1e308, each the correctly rounded f64, as serde_json's table has them.
static POW10: LazyLock<Vec<f64>> = LazyLock::new(|| {
    (0..=308)
        .map(|i| format!("1e{i}").parse().unwrap_or(f64::INFINITY))
        .collect()
});

/// Decode a validated string's content, handing the decoded pieces to `out`, which
/// returns false to stop (a key too long to be watched). False if stopped or malformed.
fn unescape(inner: &[u8], mut out: impl FnMut(&[u8]) -> bool) -> bool {
    let mut rest = inner;
    while let Some(j) = memchr::memchr(b'\\', rest) {
        if !out(&rest[..j]) {
            return false;
        }
        let simple = |c: u8| -> &'static [u8] {
            match c {
                b'"' => b"\"",
                b'\\' => b"\\",
                b'/' => b"/",
                b'b' => b"\x08",
                b'f' => b"\x0c",
                b'n' => b"\n",
                b'r' => b"\r",
                b't' => b"\t",
                _ => b"",
            }
        };
        let used = match rest.get(j + 1) {
            Some(b'u') => {
                let Some(hi) = hex4(rest, j + 2) else {
                    return false;
                };
                let (cp, used) = if (0xD800..0xDC00).contains(&hi) {
                    let Some(lo) = hex4(rest, j + 8) else {
                        return false;
                    };
                    let cp = 0x1_0000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) & 0x3FF);
                    (cp, 12)
                } else {
                    (u32::from(hi), 6)
                };
                let Some(ch) = char::from_u32(cp) else {
                    return false;
                };
                if !out(ch.encode_utf8(&mut [0; 4]).as_bytes()) {
                    return false;
                }
                used
            }
            Some(&c) if !simple(c).is_empty() => {
                if !out(simple(c)) {
                    return false;
                }
                2
            }
            _ => return false,
        };
        rest = rest.get(j + used..).unwrap_or_default();
    }
    out(rest)
}

/// A key's text: the raw bytes when it has no escape, else decoded into `buf`. `None`
/// when it is longer than `buf`, so none of the watched keys.
fn key_text<'k>(body: &'k [u8], key: Key, buf: &'k mut [u8; KEY_BUF]) -> Option<&'k [u8]> {
    let inner = body.get(key.inner_start..key.inner_end)?;
    if !key.escaped {
        return Some(inner);
    }
    let mut n = 0;
    let fits = unescape(inner, |piece| match buf.get_mut(n..n + piece.len()) {
        Some(dst) => {
            dst.copy_from_slice(piece);
            n += piece.len();
            true
        }
        None => false,
    });
    fits.then(|| &buf[..n])
}

/// A validated JSON string value (quotes included), decoded.
fn decode_string(raw: &[u8]) -> R<String> {
    let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or_default();
    let mut out = Vec::with_capacity(inner.len());
    if !unescape(inner, |piece| {
        out.extend_from_slice(piece);
        true
    }) {
        return Err("invalid string".into());
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 in string".into())
}

/// Scan a request body: it must be one JSON object, and none of the watched fields may
/// appear twice (nor `include_usage` inside `stream_options`).
pub fn scan(body: &[u8]) -> Result<RequestHead, String> {
    let mut s = Scanner { b: body, i: 0 };
    let mut head = RequestHead::default();
    s.ws();
    if s.peek()? != b'{' {
        return Err("request body must be a JSON object".into());
    }
    let mut seen = [false; WATCHED.len()];
    let mut buf = [0u8; KEY_BUF];
    let object = s.object(1, |key, v| {
        let Some(text) = key_text(body, key, &mut buf) else {
            return Ok(());
        };
        let Some(slot) = WATCHED.iter().position(|(k, _)| k.as_bytes() == text) else {
            return Ok(());
        };
        let (name, field) = WATCHED[slot];
        if std::mem::replace(&mut seen[slot], true) {
            return Err(format!("duplicate key `{name}`"));
        }
        let raw = &body[v.clone()];
        match field {
            Field::Model => {
                if raw.first() != Some(&b'"') {
                    return Err("`model` must be a string".into());
                }
                head.model = Some(decode_string(raw)?);
                head.model_range = Some(v);
            }
            Field::Stream => {
                head.stream = match raw {
                    b"true" => true,
                    b"false" | b"null" => false,
                    _ => return Err("`stream` must be a boolean".into()),
                }
            }
            Field::User => {
                if raw.first() == Some(&b'"') {
                    head.user = Some(decode_string(raw)?);
                }
            }
            Field::StreamOptions => {
                match raw.first() {
                    Some(b'{') => head.include_usage = include_usage(body, v.start)?,
                    Some(b'n') => {}
                    _ => return Err("`stream_options` must be an object or null".into()),
                }
                head.stream_options_range = Some(v);
            }
        }
        Ok(())
    })?;
    head.object_end = object.end - 1;
    s.ws();
    if s.i != body.len() {
        return Err(format!("unexpected data after the JSON object at byte {}", s.i));
    }
    Ok(head)
}

/// `include_usage` of the (already validated) `stream_options` object at `at`, if a
/// boolean; a duplicate is refused.
fn include_usage(body: &[u8], at: usize) -> R<Option<bool>> {
    let mut found = None;
    let mut buf = [0u8; KEY_BUF];
    Scanner { b: body, i: at }.object(2, |key, v| {
        if key_text(body, key, &mut buf) == Some(b"include_usage") {
            if found.is_some() {
                return Err("duplicate key `stream_options.include_usage`".into());
            }
            found = Some(match &body[v] {
                b"true" => Some(true),
                b"false" => Some(false),
                _ => None,
            });
        }
        Ok(())
    })?;
    Ok(found.flatten())
}


/// The `"usage"` key, with its searcher built once (`memmem::find` builds one per call,
/// which cost more than searching an SSE line): the stream strip here and the usage
/// scan in `account` both look for it in every chunk.
pub(crate) static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));

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

/// Undo the effect of an injected `include_usage` on one SSE chunk: drop the usage-only
/// event (`"choices":[]` with a usage object) and the `"usage":null` members that the
/// upstream adds to every other chunk. `None` when the chunk needs no change.
/// Limitation: an event split across two chunks is passed through unchanged.
///
/// One pass over the chunk's `"usage"` keys, with searchers built once (`memmem::find`
/// builds one per call, which cost more than the search); only an event with a usage
/// object is searched as a whole. A proptest checks it against the event-by-event
/// definition.
pub fn strip_usage(chunk: &[u8]) -> Option<Vec<u8>> {
    let key_len = USAGE_KEY.needle().len();
    static EVENT_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\n\n"));
    static NO_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));
    let end_from = |s: usize| EVENT_END.find(&chunk[s..]).map_or(chunk.len(), |i| s + i + 2);
    let mut next = Some(USAGE_KEY.find(chunk)?);
    let mut out = Vec::with_capacity(chunk.len());
    // `chunk[..done]` is decided: copied into `out` or left out.
    let mut done = 0;
    let (mut ev_start, mut ev_end) = (0, end_from(0));
    let mut keys = Vec::new();
    while let Some(first) = next {
        while ev_end <= first {
            (ev_start, ev_end) = (ev_end, end_from(ev_end));
        }
        // Every key of this event; `next` becomes the first key of a later one.
        keys.clear();
        let mut k = first;
        loop {
            keys.push(k);
            let from = k + key_len;
            match USAGE_KEY.find(&chunk[from..]).map(|i| from + i) {
                Some(j) if j < ev_end => k = j,
                later => {
                    next = later;
                    break;
                }
            }
        }
        let event = &chunk[ev_start..ev_end];
        let has_object = keys.iter().any(|&k| chunk[k + key_len..].starts_with(b":{"));
        if has_object && event.starts_with(b"data:") && NO_CHOICES.find(event).is_some() {
            out.extend_from_slice(&chunk[done..ev_start]);
            done = ev_end;
            continue;
        }
        for &k in &keys {
            if k > done && chunk[k - 1] == b',' && chunk[k + key_len..].starts_with(b":null") {
                out.extend_from_slice(&chunk[done..k - 1]);
                done = k + key_len + b":null".len();
            }
        }
    }
    out.extend_from_slice(&chunk[done..]);
    Some(out)
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

        let chunk = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
        let out = strip_usage(chunk).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "data: {\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n"
        );
        assert!(strip_usage(b"data: {\"choices\":[]}\n\n").is_none());
    }

    /// `strip_usage` by its definition, event by event (what it did before the one-pass
    /// version): the reference for the proptest below.
    fn strip_usage_by_event(chunk: &[u8]) -> Option<Vec<u8>> {
        let find = |h: &[u8], n: &[u8]| memchr::memmem::find(h, n);
        find(chunk, b"\"usage\"")?;
        let mut out = Vec::with_capacity(chunk.len());
        let mut rest = chunk;
        while !rest.is_empty() {
            let end = find(rest, b"\n\n").map_or(rest.len(), |i| i + 2);
            let event = &rest[..end];
            let usage_only = event.starts_with(b"data:")
                && find(event, b"\"choices\":[]").is_some()
                && find(event, b"\"usage\":{").is_some();
            if !usage_only {
                let mut e = event;
                while let Some(i) = find(e, b",\"usage\":null") {
                    out.extend_from_slice(&e[..i]);
                    e = &e[i + 13..];
                }
                out.extend_from_slice(e);
            }
            rest = &rest[end..];
        }
        Some(out)
    }

    /// SSE chunks built from the pieces an OpenAI stream with `include_usage` has, cut
    /// anywhere: the one-pass strip agrees with the event-by-event definition.
    #[test]
    fn strip_usage_matches_its_definition() {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"total_tokens\":2}}\n\n",
            "data: {\"usage\":{\"a\":1},\"choices\":[]}\n\n",
            "data: {\"choices\":[{}],\"usage\":{\"total_tokens\":2}}\n\n",
            ",\"usage\":null",
            "\"usage\":null",
            "\"usage\":{",
            "\"choices\":[]",
            "data: [DONE]\n\n",
            ": keep-alive\n\n",
            "\n\n",
            "\n",
            "data: ",
            "x",
        ]);
        proptest!(|(pieces in prop::collection::vec(piece, 0..12), cut in 0usize..400)| {
            let chunk = pieces.concat().into_bytes();
            let chunk = &chunk[..cut.min(chunk.len())];
            prop_assert_eq!(strip_usage(chunk), strip_usage_by_event(chunk));
        });
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
