//! Reading the few fields the router needs from a JSON request body (`model`, `stream`,
//! `user`, `stream_options.include_usage`, and `max_tokens` / `max_completion_tokens` /
//! `max_output_tokens` for the limits' estimate) in one linear pass, and rewriting `model` by
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
    /// The largest of `max_tokens`, `max_completion_tokens` and `max_output_tokens` that
    /// is a non-negative integer (the limits' output estimate, `limits::Estimate`); other
    /// values are the upstream's to refuse.
    pub max_output: Option<u64>,
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
    /// `max_tokens`, `max_completion_tokens` (Chat), `max_output_tokens` (Responses).
    MaxOutput,
}

const WATCHED: [(&str, Field); 7] = [
    ("model", Field::Model),
    ("stream", Field::Stream),
    ("stream_options", Field::StreamOptions),
    ("user", Field::User),
    ("max_tokens", Field::MaxOutput),
    ("max_completion_tokens", Field::MaxOutput),
    ("max_output_tokens", Field::MaxOutput),
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
        let (b, inner_start) = (self.b, self.i);
        // Most strings (every key, most values) are short and plain: 8-byte words find
        // the closing quote and check the content at once (`bytescan`). An escape, a
        // long string or the last bytes of the body take the loop below.
        if let Some((end, low)) = crate::bytescan::quote_or_backslash(b, inner_start, SHORT_STRING) {
            if b[end] == b'"' {
                // A control character or a non-ASCII byte: the exact check decides.
                if low && !content_ok(&b[inner_start..end]) {
                    return Err(format!(
                        "control character or invalid UTF-8 in the string at byte {}",
                        inner_start - 1
                    ));
                }
                self.i = end + 1;
                return Ok(Key {
                    inner_start,
                    inner_end: end,
                    escaped: false,
                });
            }
        }
        // A local index: the loop runs once per escape, and `self.i` would be stored and
        // reloaded around every call.
        let mut i = inner_start;
        let mut escaped = false;
        loop {
            let rest = b.get(i..).unwrap_or_default();
            let Some(off) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err("unterminated string".into());
            };
            i += off;
            if rest[off] == b'"' {
                break;
            }
            escaped = true;
            match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    self.i = i;
                    self.unicode_escape()?;
                    i = self.i;
                }
                _ => return Err(format!("invalid escape at byte {i}")),
            }
        }
        // Checked once for the whole string: escapes are printable ASCII, so they change
        // neither answer, and one long run vectorises where short pieces would not.
        if !content_ok(&b[inner_start..i]) {
            return Err(format!(
                "control character or invalid UTF-8 in the string at byte {}",
                inner_start - 1
            ));
        }
        self.i = i + 1;
        Ok(Key {
            inner_start,
            inner_end: i,
            escaped,
        })
    }

    /// A `\uXXXX` escape at `self.i`. Surrogates must pair: serde_json refuses a lone one
    /// when it reads a string (as it does for every key and `Value` string).
    #[cold]
    fn unicode_escape(&mut self) -> R<()> {
        let at = self.i;
        let n = hex4(self.b, at + 2).ok_or_else(|| format!("invalid escape at byte {at}"))?;
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

/// How far `Scanner::string` looks for a string's end 8 bytes at a time before it
/// hands over to memchr.
const SHORT_STRING: usize = 64;

/// Whether a string's content is valid: no raw control characters and valid UTF-8. The
/// common all-ASCII case is one branch-free pass that the compiler vectorises; anything
/// else is checked exactly. Checking UTF-8 per string is exact: outside strings the
/// grammar admits ASCII only, so the body is valid UTF-8 when every string is.
#[inline]
fn content_ok(seg: &[u8]) -> bool {
    // As `i8`, control characters (< 0x20) and non-ASCII bytes (negative) are below 0x20.
    // Fixed-size blocks, so that the inner fold compiles to a few vector instructions.
    let mut blocks = seg.chunks_exact(32);
    let printable_ascii = blocks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |bad, &x| bad | u8::from((x as i8) < 0x20)) == 0)
        && blocks.remainder().iter().all(|&x| (x as i8) >= 0x20);
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
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner)
            .map(str::to_owned)
            .map_err(|_| "invalid UTF-8 in string".into());
    }
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
            Field::MaxOutput => {
                // What serde_json's `as_u64` reads: plain digits that fit (a sign, a
                // fraction or an exponent make it a float).
                if let Some(n) = raw
                    .iter()
                    .all(u8::is_ascii_digit)
                    .then(|| std::str::from_utf8(raw).ok()?.parse::<u64>().ok())
                    .flatten()
                {
                    head.max_output = Some(head.max_output.map_or(n, |m| m.max(n)));
                }
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

/// The scan held to serde_json's reading: examples of each trick, then a differential
/// proptest on generated and byte-mutated bodies.
#[cfg(test)]
mod scan_tests {
    use std::{fmt, marker::PhantomData};

    use proptest::{prelude::*, test_runner::TestCaseError};
    use serde::de::{Deserialize, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::Value;

    use super::*;

    /// A top-level object as its members in order, duplicates kept.
    struct Pairs<T>(Vec<(String, T)>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Pairs<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
                type Value = Pairs<T>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs<T>, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Pairs(v))
                }
            }
            d.deserialize_map(V(PhantomData))
        }
    }

    /// A value read for one thing only: how many `include_usage` keys it has if it is an
    /// object (serde_json's `Value` map keeps only the last duplicate).
    struct UsageKeys(usize);

    impl<'de> Deserialize<'de> for UsageKeys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = UsageKeys;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UsageKeys, A::Error> {
                    let mut n = 0;
                    while let Some((k, IgnoredAny)) = m.next_entry::<String, IgnoredAny>()? {
                        n += usize::from(k == "include_usage");
                    }
                    Ok(UsageKeys(n))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<UsageKeys, A::Error> {
                    while s.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(UsageKeys(0))
                }
                fn visit_unit<E: serde::de::Error>(self) -> Result<UsageKeys, E> {
                    Ok(UsageKeys(0))
                }
                fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<UsageKeys, E> {
                    Ok(UsageKeys(0))
                }
                fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<UsageKeys, E> {
                    Ok(UsageKeys(0))
                }
                fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<UsageKeys, E> {
                    Ok(UsageKeys(0))
                }
                fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<UsageKeys, E> {
                    Ok(UsageKeys(0))
                }
                fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<UsageKeys, E> {
                    Ok(UsageKeys(0))
                }
            }
            d.deserialize_any(V).map_err(D::Error::custom)
        }
    }

    /// Holds `scan` to serde_json's reading of `body`: equal decisions, or a refusal that
    /// names the field when a watched field is duplicated or of the wrong type.
    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        let got = scan(body);
        let shown = String::from_utf8_lossy(body);
        let Ok(Pairs(pairs)) = serde_json::from_slice::<Pairs<Value>>(body) else {
            prop_assert!(got.is_err(), "serde refuses, scan accepts: {shown}");
            return Ok(());
        };
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let mut bad: Vec<&str> = Vec::new();
        for (name, _) in WATCHED {
            if pairs.iter().filter(|(k, _)| k == name).count() > 1 {
                bad.push(name);
            }
        }
        if get("model").is_some_and(|v| !v.is_string()) {
            bad.push("model");
        }
        if get("stream").is_some_and(|v| !(v.is_boolean() || v.is_null())) {
            bad.push("stream");
        }
        match get("stream_options") {
            Some(Value::Object(_)) => {
                // The `Value` map keeps the last duplicate: count them on the raw text.
                let Pairs(probe) = serde_json::from_slice::<Pairs<UsageKeys>>(body)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if probe.iter().any(|(k, n)| k == "stream_options" && n.0 > 1) {
                    bad.push("include_usage");
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => bad.push("stream_options"),
        }
        if !bad.is_empty() {
            let Err(e) = got else {
                return Err(TestCaseError::fail(format!("scan accepts {bad:?}: {shown}")));
            };
            prop_assert!(
                bad.iter().any(|n| e.contains(&format!("{n}`"))),
                "{e:?} names none of {bad:?}: {shown}"
            );
            return Ok(());
        }
        let h = got.map_err(|e| TestCaseError::fail(format!("scan refuses ({e}): {shown}")))?;
        prop_assert_eq!(
            h.model.as_deref(),
            get("model").and_then(Value::as_str),
            "{}",
            shown
        );
        prop_assert_eq!(h.stream, get("stream") == Some(&Value::Bool(true)), "{}", shown);
        prop_assert_eq!(
            h.user.as_deref(),
            get("user").and_then(Value::as_str),
            "{}",
            shown
        );
        let so = get("stream_options");
        let usage = so.and_then(|s| s.get("include_usage")).and_then(Value::as_bool);
        prop_assert_eq!(h.include_usage, usage, "{}", shown);
        let max_output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .filter_map(|n| get(n).and_then(Value::as_u64))
            .max();
        prop_assert_eq!(h.max_output, max_output, "{}", shown);
        match (&h.model_range, get("model")) {
            (Some(r), Some(m)) => {
                prop_assert_eq!(
                    &serde_json::from_slice::<Value>(&body[r.clone()]).ok(),
                    &Some(m.clone())
                );
                prop_assert_eq!(body[r.start], b'"');
            }
            (None, None) => {}
            (r, m) => return Err(TestCaseError::fail(format!("model_range {r:?} for {m:?}"))),
        }
        let so_range = h.stream_options_range.clone();
        prop_assert_eq!(
            so_range.map(|r| serde_json::from_slice::<Value>(&body[r]).ok()),
            so.map(|v| Some(v.clone()))
        );
        prop_assert_eq!(body[h.object_end], b'}');
        prop_assert!(body[h.object_end + 1..].iter().all(u8::is_ascii_whitespace));
        Ok(())
    }

    #[derive(Clone, Debug)]
    enum J {
        Lit(&'static str),
        Num(u64),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    /// Numbers at the edges of serde_json's grammar and range, literals included.
    const LITS: [&str; 22] = [
        "null",
        "true",
        "false",
        "0",
        "-0",
        "7",
        "-12",
        "1.5",
        "-0.0e0",
        "1e5",
        "2E+2",
        "-3.25e-7",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890.5e-3",
        "1e308",
        "1.7976931348623157e308",
        "1.8e308",
        "-1e400",
        "0e99999999999",
        "1e-99999999999",
    ];

    /// Strings written with escapes the renderer never makes: lone and paired surrogates.
    const ESCAPED: [&str; 7] = [
        r#""\ud800""#,
        r#""x\udc00""#,
        r#""\ud83d\ude00""#,
        r#""\ud800\u0041""#,
        r#""\uDBFF\uDFFF""#,
        r#""\ud800\ud800\udc00""#,
        r#""\u00e9\u0000""#,
    ];

    fn text() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "model",
            "stream",
            "stream_options",
            "include_usage",
            "user",
            "a",
            "é",
            "中",
            "😀",
            "\u{10FFFF}",
            "\"",
            "\\",
            "/",
            "\n",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            " ",
            "d",
        ]);
        prop::collection::vec(piece, 0..4).prop_map(|v| v.concat())
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "model", "stream", "stream_options", "user", "include_usage", "messages",
                "mode", "modelx", "Model", "x", "max_tokens", "max_completion_tokens",
                "max_output_tokens",
            ])
            .prop_map(str::to_string),
            1 => text(),
        ]
    }

    fn value() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            prop::sample::select(LITS.to_vec()).prop_map(J::Lit),
            text().prop_map(J::Str),
            prop::sample::select(ESCAPED.to_vec()).prop_map(J::Lit),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
                prop::collection::vec((key(), inner), 0..4).prop_map(J::Obj),
            ]
        })
    }

    /// A top-level member whose value fits its key most of the time.
    fn member() -> impl Strategy<Value = (String, J)> {
        let usage = prop_oneof![
            prop::sample::select(vec!["true", "false", "null", "1"]).prop_map(J::Lit),
            text().prop_map(J::Str)
        ];
        let so = prop::collection::vec(
            (prop_oneof![Just("include_usage".to_string()), key()], usage),
            0..3,
        )
        .prop_map(J::Obj);
        prop_oneof![
            3 => text().prop_map(|t| ("model".to_string(), J::Str(t))),
            2 => prop::sample::select(vec!["true", "false", "null", "1", "\"true\""])
                .prop_map(|l| ("stream".to_string(), J::Lit(l))),
            2 => so.prop_map(|o| ("stream_options".to_string(), o)),
            1 => text().prop_map(|t| ("user".to_string(), J::Str(t))),
            2 => (
                prop::sample::select(vec!["max_tokens", "max_completion_tokens", "max_output_tokens"]),
                prop_oneof![
                    prop::sample::select(LITS.to_vec()).prop_map(J::Lit),
                    (0u64..100_000).prop_map(J::Num),
                ],
            )
                .prop_map(|(k, v)| (k.to_string(), v)),
            4 => (key(), value()),
        ]
    }

    /// Renders `j` with whitespace and escapes chosen by `noise`.
    struct Render<'n> {
        noise: &'n [u8],
        at: usize,
        out: String,
    }

    impl Render<'_> {
        fn roll(&mut self) -> u8 {
            let n = self
                .noise
                .get(self.at % self.noise.len().max(1))
                .copied()
                .unwrap_or(0);
            self.at += 1;
            n
        }

        fn ws(&mut self) {
            let n = self.roll();
            if n < 40 {
                let ws = [" ", "\n", "\t", "\r", "  \n "];
                self.out.push_str(ws[usize::from(n) % ws.len()]);
            }
        }

        fn string(&mut self, s: &str) {
            self.out.push('"');
            for c in s.chars() {
                let n = self.roll();
                match c {
                    '"' => self.out.push_str(if n < 128 { "\\\"" } else { "\\u0022" }),
                    '\\' => self.out.push_str("\\\\"),
                    '/' if n < 100 => self.out.push_str("\\/"),
                    '\n' if n < 128 => self.out.push_str("\\n"),
                    c if (c as u32) < 0x20 || n < 70 => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            // Hex digits in either case.
                            let hex = if n.is_multiple_of(2) {
                                format!("\\u{u:04x}")
                            } else {
                                format!("\\u{u:04X}")
                            };
                            self.out.push_str(&hex);
                        }
                    }
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }

        fn value(&mut self, j: &J) {
            match j {
                J::Lit(l) => self.out.push_str(l),
                J::Num(n) => self.out.push_str(&n.to_string()),
                J::Str(s) => self.string(s),
                J::Arr(items) => {
                    self.out.push('[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.ws();
                        self.value(v);
                        self.ws();
                    }
                    self.out.push(']');
                }
                J::Obj(members) => {
                    self.out.push('{');
                    for (i, (k, v)) in members.iter().enumerate() {
                        if i > 0 {
                            self.out.push(',');
                        }
                        self.ws();
                        self.string(k);
                        self.ws();
                        self.out.push(':');
                        self.ws();
                        self.value(v);
                        self.ws();
                    }
                    self.ws();
                    self.out.push('}');
                }
            }
        }
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(member(), 0..7),
            prop::collection::vec(any::<u8>(), 1..64),
        )
            .prop_map(|(members, noise)| {
                let mut r = Render {
                    noise: &noise,
                    at: 0,
                    out: String::new(),
                };
                r.ws();
                r.value(&J::Obj(members));
                r.ws();
                r.out.into_bytes()
            })
    }

    #[derive(Clone, Debug)]
    enum Edit {
        Insert(usize, u8),
        Delete(usize),
        Replace(usize, u8),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let byte = prop_oneof![
            3 => prop::sample::select(b"\"\\{}[],: \n\t0912-+.eEuDdtfn/\x00\x01\x1f\x7f\x80\xbf\xc3\xed\xf0\xff".to_vec()),
            1 => any::<u8>(),
        ];
        prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Delete),
            (any::<usize>(), byte).prop_map(|(i, b)| Edit::Replace(i, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn reads_bodies_as_serde_does(body in body()) {
            check(&body)?;
        }

        #[test]
        fn mutated_bodies_decided_as_serde_does(body in body(), edits in prop::collection::vec(edit(), 1..3)) {
            let mut body = body;
            for e in edits {
                let n = body.len();
                match e {
                    Edit::Insert(i, b) => body.insert(i % (n + 1), b),
                    Edit::Delete(i) if n > 0 => { body.remove(i % n); }
                    Edit::Replace(i, b) if n > 0 => body[i % n] = b,
                    _ => {}
                }
            }
            check(&body)?;
        }
    }

    fn err(body: &str) -> String {
        scan(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn escaped_duplicates_are_refused_by_name() {
        let e = err(r#"{"model":"cheap","mo\u0064el":"gpt-4o","messages":[]}"#);
        assert!(e.contains("duplicate key `model`"), "{e}");
        let e = err(r#"{"model":"cheap","stream":false,"str\u0065am":true}"#);
        assert!(e.contains("`stream`"), "{e}");
        let e = err(r#"{"stream_options":{},"stream\u005foptions":null}"#);
        assert!(e.contains("`stream_options`"), "{e}");
        let e = err(r#"{"user":1,"\u0075ser":"u"}"#);
        assert!(e.contains("`user`"), "{e}");
        let e = err(r#"{"stream_options":{"include_usage":false,"include\u005Fusage":true}}"#);
        assert!(e.contains("include_usage`"), "{e}");
        // Unwatched keys may repeat, at the top and inside.
        let h = scan(br#"{"a":1,"a":2,"model":"m","stream_options":{"x":1,"x":2}}"#).unwrap();
        assert_eq!(h.model.as_deref(), Some("m"));
    }

    #[test]
    fn escaped_keys_are_read() {
        let body = br#"{ "mo\u0064el" : "ch\u0065ap", "\u0073tream" : true, "us\u0065r":"\ud83d\ude00",
            "stream_options" : { "include\u005fusage" : false } }"#;
        let h = scan(body).unwrap();
        assert_eq!(h.model.as_deref(), Some("cheap"));
        assert_eq!(&body[h.model_range.unwrap()], br#""ch\u0065ap""#);
        assert!(h.stream);
        assert_eq!(h.user.as_deref(), Some("\u{1F600}"));
        assert_eq!(h.include_usage, Some(false));
        // A key too long to be watched is never decoded in full.
        let long = format!(r#"{{"{}":1,"model":"m"}}"#, "\\u0061".repeat(100));
        assert_eq!(scan(long.as_bytes()).unwrap().model.as_deref(), Some("m"));
    }

    #[test]
    fn watched_values_must_have_their_type() {
        assert!(err(r#"{"stream":1}"#).contains("`stream`"));
        assert!(err(r#"{"stream":"true"}"#).contains("`stream`"));
        assert!(err(r#"{"stream_options":[]}"#).contains("`stream_options`"));
        assert!(err(r#"{"model":null}"#).contains("`model`"));
        let h = scan(br#"{"stream":null,"stream_options":null,"user":5}"#).unwrap();
        assert!(!h.stream);
        assert_eq!(h.user, None);
        assert!(h.stream_options_range.is_some());
    }

    #[test]
    fn refuses_what_serde_refuses() {
        for bad in [
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":-}",
            "{\"a\":1e400}",
            "{\"a\":-1.8e308}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":\"\t\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":NaN}",
            "{\"a\":1}\u{0}",
            "\u{feff}{}",
            "{'a':1}",
            "{a:1}",
        ] {
            assert!(
                serde_json::from_str::<Value>(bad).is_err(),
                "serde accepts {bad:?}"
            );
            assert!(scan(bad.as_bytes()).is_err(), "scan accepts {bad:?}");
        }
        assert!(scan(b"{\"a\":\"\xff\"}").is_err());
        assert!(scan(b"{\"a\":\"\xed\xa0\x80\"}").is_err());
        for good in [
            "{\"a\":[0,-0,1e308,1e-400,0e99999999999,1.7976931348623157e308,\"\\ud83d\\ude00\\/\"]}",
            " {\"\u{7f}\":\"é中\"}\r\n",
        ] {
            assert!(
                serde_json::from_str::<Value>(good).is_ok(),
                "serde refuses {good:?}"
            );
            assert!(scan(good.as_bytes()).is_ok(), "scan refuses {good:?}");
        }
    }

    #[test]
    fn nesting_limit_is_serdes() {
        for depth in 120..=135 {
            for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                let body = format!("{{\"a\":{}0{}}}", open.repeat(depth - 1), close.repeat(depth - 1));
                let serde = serde_json::from_str::<Pairs<Value>>(&body).is_ok();
                assert_eq!(scan(body.as_bytes()).is_ok(), serde, "depth {depth}");
                assert_eq!(serde, depth <= MAX_DEPTH, "depth {depth}");
            }
        }
    }

    #[test]
    fn include_usage_edit_with_escaped_keys() {
        let body = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include\u005fusage":false,"x":1}}"#,
        );
        let h = scan(&body).unwrap();
        assert_eq!(h.include_usage, Some(false));
        let mut edits = vec![include_usage_edit(&body, &h)];
        let out = splice_many(&body, &mut edits).to_bytes();
        let h2 = scan(&out).unwrap();
        assert_eq!(h2.include_usage, Some(true));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
    }
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
