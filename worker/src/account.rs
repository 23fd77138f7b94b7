//! Usage accounting hook: the `UsageEvent` each finished request produces, a bounded,
//! non-blocking sink for it, and the token counting that reads the upstream's own
//! `usage` from a complete JSON body or from SSE frames as they pass.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use bytes::Bytes;

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::toplevel::{Key, Member, TopLevel};

/// Token counts reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Cache reads (OpenAI `prompt_tokens_details.cached_tokens`, Anthropic
    /// `cache_read_input_tokens`); part of `prompt_tokens`.
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Anthropic's `cache_creation_input_tokens`; part of `prompt_tokens`, apart from
    /// `cached_tokens` (a cache write costs more than an input token, a read less).
    pub cache_write_tokens: u64,
}

/// What one token of each class costs, in nano-units of the currency per token, with
/// the fallbacks applied (an unset cached or cache-write price is the input price, an
/// unset reasoning price the output price). From the snapshot the request ran under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Price {
    /// The exact cost of `u` in nano-units: input not read from or written to a cache at
    /// the input price, cache reads and writes at theirs, output (reasoning left out) at
    /// the output price, reasoning at its own. Five integer products, saturating.
    pub fn cost(&self, u: &Usage) -> u64 {
        let uncached = u
            .prompt_tokens
            .saturating_sub(u.cached_tokens)
            .saturating_sub(u.cache_write_tokens);
        let reasoning = u.reasoning_tokens.min(u.completion_tokens);
        let output = u.completion_tokens - reasoning;
        [
            (uncached, self.input),
            (u.cached_tokens, self.cached_input),
            (u.cache_write_tokens, self.cache_write),
            (output, self.output),
            (reasoning, self.reasoning),
        ]
        .iter()
        .fold(0u64, |sum, &(n, p)| sum.saturating_add(n.saturating_mul(p)))
    }
}

/// A request's cost with `price` (`None`: the backend has no price), in nano-units;
/// `None` when it had tokens and no price (unpriced, never free).
pub fn cost_of(price: Option<&Price>, u: &Usage) -> Option<u64> {
    match price {
        Some(p) => Some(p.cost(u)),
        None if u.prompt_tokens == 0 && u.completion_tokens == 0 => Some(0),
        None => None,
    }
}

/// How a request ended (the `outcome` column of a usage record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ClientError,
    UpstreamError,
    ClientAborted,
    StreamError,
    NoBackend,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
            Self::ClientAborted => "client_aborted",
            Self::StreamError => "stream_error",
            Self::NoBackend => "no_backend",
            Self::Rejected => "rejected",
        }
    }
}

/// One finished proxied request, as the reporter (issue 5) stores it.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub ts_ms: i64,
    pub request_id: String,
    pub key_id: Arc<str>,
    pub key_name: Arc<str>,
    /// The key's team when the request ran (`None`: none).
    pub team: Option<Arc<str>>,
    pub model: Arc<str>,
    pub backend: Arc<str>,
    pub provider: Arc<str>,
    pub credential: Arc<str>,
    pub endpoint: String,
    pub status: u16,
    pub stream: bool,
    pub retries: u32,
    pub latency_us: u64,
    pub ttfb_us: u64,
    pub usage: Usage,
    /// Nano-units of the currency; `None` = unpriced (see [`cost_of`]).
    pub cost_nano: Option<u64>,
    pub outcome: Outcome,
}

/// Where usage events go. Must never block: implementations drop (and count) when full.
pub trait UsageSink: Send + Sync + std::fmt::Debug {
    fn record(&self, ev: UsageEvent);
}

/// A bounded channel sink; the receiver side is drained by the reporter.
#[derive(Debug)]
pub struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<UsageEvent>,
    pub dropped: Arc<AtomicU64>,
}

impl ChannelSink {
    pub fn new(capacity: usize) -> (Self, tokio::sync::mpsc::Receiver<UsageEvent>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }
}

impl UsageSink for ChannelSink {
    fn record(&self, ev: UsageEvent) {
        if self.tx.try_send(ev).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a health transition is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthTarget {
    /// `backend` or `credential`.
    pub kind: &'static str,
    pub model: String,
    pub backend: String,
    pub provider: String,
    pub credential: String,
}

impl HealthTarget {
    pub fn backend(model: &str, backend: &str, provider: &str) -> Self {
        Self {
            kind: "backend",
            model: model.into(),
            backend: backend.into(),
            provider: provider.into(),
            ..Default::default()
        }
    }
    pub fn credential(provider: &str, credential: &str) -> Self {
        Self {
            kind: "credential",
            provider: provider.into(),
            credential: credential.into(),
            ..Default::default()
        }
    }
}

/// A health flip of one backend or credential on this worker (issue 5's health events).
#[derive(Debug, Clone)]
pub struct HealthEvent {
    pub ts_ms: i64,
    pub target: HealthTarget,
    pub healthy: bool,
    pub reason: String,
}

/// Where health events go. Must never block.
pub trait HealthSink: Send + Sync + std::fmt::Debug {
    fn record(&self, ev: HealthEvent);
}

/// A non-streaming body up to this size is kept (as `Bytes` handles, no copies) and read
/// when it ends, from its end when `usage` is its last member; a longer one is read as it
/// passes by an incremental reader ([`TopLevel`]) that keeps only the `usage` and
/// `message` values (each up to [`crate::toplevel::MAX_CAPTURE`]).
const MAX_JSON_KEEP: usize = 256 * 1024;

/// The `"usage"` key, with its searcher built once (`memmem::find` builds one per call,
/// which cost more than searching an SSE line).
static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
/// An escaped ASCII character: the only way a key's letters can be escaped.
static ASCII_ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u00"));

/// Watches response chunks for usage; keeps `Bytes` handles (no copies) for a JSON body,
/// and for SSE reads each `data:` line, of any length: lines that end in the chunk they
/// began in are only read when they may hold a usage object; a line spread over chunks is
/// fed to an incremental reader as it comes.
#[derive(Debug)]
pub enum UsageScanner {
    Off,
    Json {
        chunks: Vec<Bytes>,
        len: usize,
        /// Past `MAX_JSON_KEEP`: the body is read as it passes.
        reader: Option<Box<TopLevel>>,
    },
    Sse {
        /// The state of the line begun in an earlier chunk and not ended yet.
        line: Line,
        reader: Option<Box<TopLevel>>,
        usage: Usage,
        seen: bool,
    },
}

/// Where the unfinished SSE line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// At a line's start, or `n` bytes of its `data:` prefix matched.
    Prefix(u8),
    /// In a `data:` line's value (fed to the reader).
    Data,
    /// In any other line.
    Skip,
}

impl UsageScanner {
    pub fn new(sse: bool, success: bool) -> Self {
        match (success, sse) {
            (false, _) => Self::Off,
            (true, true) => Self::Sse {
                line: Line::Prefix(0),
                reader: None,
                usage: Usage::default(),
                seen: false,
            },
            (true, false) => Self::Json {
                chunks: Vec::new(),
                len: 0,
                reader: None,
            },
        }
    }

    pub fn observe(&mut self, chunk: &Bytes) {
        match self {
            Self::Off => {}
            Self::Json { chunks, len, reader } => {
                if let Some(r) = reader {
                    r.feed(chunk, &mut |_| {});
                    return;
                }
                *len += chunk.len();
                if *len > MAX_JSON_KEEP {
                    let mut r = Box::new(TopLevel::new(true));
                    for c in chunks.drain(..) {
                        r.feed(&c, &mut |_| {});
                    }
                    r.feed(chunk, &mut |_| {});
                    *chunks = Vec::new();
                    *reader = Some(r);
                } else {
                    chunks.push(chunk.clone());
                }
            }
            Self::Sse {
                line,
                reader,
                usage,
                seen,
            } => {
                let mut rest: &[u8] = chunk;
                if *line != Line::Prefix(0) {
                    // The line begun in an earlier chunk.
                    let nl = memchr::memchr(b'\n', rest);
                    let seg = &rest[..nl.unwrap_or(rest.len())];
                    continue_line(line, reader, seg);
                    let Some(nl) = nl else { return };
                    if *line == Line::Data {
                        if let Some(r) = reader.as_deref() {
                            if let Some(obj) = usage_of(r.usage(), r.message(), r.response_usage()) {
                                *seen |= obj.apply(usage);
                            }
                        }
                    }
                    *line = Line::Prefix(0);
                    rest = &rest[nl + 1..];
                }
                // The complete lines: only one that may hold a usage object is read, so
                // they are found by their `"usage"` keys, one search over the chunk, not
                // one per line.
                let last = memchr::memrchr(b'\n', rest).map_or(0, |i| i + 1);
                let lines = &rest[..last];
                let mut from = 0;
                while let Some(k) = next_candidate(&lines[from..]).map(|k| from + k) {
                    let start = memchr::memrchr(b'\n', &lines[..k]).map_or(0, |i| i + 1);
                    let end = k + memchr::memchr(b'\n', &lines[k..]).unwrap_or(lines.len() - k);
                    sse_line(&lines[start..end], usage, seen);
                    from = end;
                }
                let tail = &rest[last..];
                if !tail.is_empty() {
                    continue_line(line, reader, tail);
                }
            }
        }
    }

    /// The counts seen so far (for a JSON body: only when it parsed completely).
    /// `complete`: the body arrived in full (not cut by the upstream or the client).
    pub fn finish(&mut self, complete: bool) -> Option<Usage> {
        match self {
            Self::Off => None,
            Self::Json { reader: Some(r), .. } => {
                let mut u = Usage::default();
                usage_of(r.usage(), r.message(), r.response_usage())?
                    .apply(&mut u)
                    .then_some(u)
            }
            Self::Json { chunks, .. } => {
                // Only the top level is walked (strings skipped with memchr, nothing
                // decoded), and only the `usage` object is parsed, into plain integers:
                // a full parse cost more than relaying the response.
                let joined;
                let body: &[u8] = if chunks.len() == 1 {
                    &chunks[0]
                } else {
                    joined = chunks.concat();
                    &joined
                };
                let usage = usage_in_document(body, complete)?;
                let mut u = Usage::default();
                usage.apply(&mut u).then_some(u)
            }
            Self::Sse { usage, seen, .. } => seen.then_some(*usage),
        }
    }
}

/// Feed `seg`, a piece of the unfinished line, to the line's state.
fn continue_line(line: &mut Line, reader: &mut Option<Box<TopLevel>>, mut seg: &[u8]) {
    const DATA: &[u8] = b"data:";
    if let Line::Prefix(n) = *line {
        let n = usize::from(n);
        let want = &DATA[n..];
        let k = want.len().min(seg.len());
        if seg[..k] != want[..k] {
            *line = Line::Skip;
            return;
        }
        if k < want.len() {
            // `k` < 5: fits.
            *line = Line::Prefix((n + k) as u8);
            return;
        }
        seg = &seg[k..];
        *line = Line::Data;
        reader
            .get_or_insert_with(|| Box::new(TopLevel::new(true)))
            .reset();
    }
    if *line == Line::Data {
        if let Some(r) = reader {
            r.feed(seg, &mut |_| {});
        }
    }
}

/// The start of the next place in `lines` where a line may hold a usage object: a
/// `"usage"` key whose value is an object, or any escaped ASCII character (a key could
/// read `usage` after unescaping). OpenAI stream chunks carry `"usage":null` when usage
/// was requested: reading those would cost a walk per chunk for nothing.
fn next_candidate(lines: &[u8]) -> Option<usize> {
    let esc = ASCII_ESCAPE.find(lines);
    let within = &lines[..esc.unwrap_or(lines.len())];
    let mut from = 0;
    while let Some(k) = USAGE_KEY.find(&within[from..]).map(|k| from + k) {
        let key_end = k + USAGE_KEY.needle().len();
        if object_follows(&lines[key_end..]) {
            return Some(k);
        }
        from = key_end;
    }
    esc
}

/// The usage object of a document: its `usage` member, else `message.usage` (Anthropic
/// `message_start`), else `response.usage` (the Responses API's `response.completed`),
/// given the raw values of `usage`, `message` and `response.usage`.
fn usage_of(
    usage: Option<&[u8]>,
    message: Option<&[u8]>,
    response_usage: Option<&[u8]>,
) -> Option<UsageObject> {
    if let Some(u) = usage.and_then(UsageObject::parse) {
        return Some(u);
    }
    if let Some(u) = message
        .and_then(|m| member(m, b"usage"))
        .and_then(UsageObject::parse)
    {
        return Some(u);
    }
    UsageObject::parse(response_usage?)
}

/// The usage object of a JSON document (a response body or an SSE `data:` line): its
/// top-level `usage`, else `message.usage` (Anthropic `message_start`), else
/// `response.usage` (Responses API `response.completed`).
///
/// `complete`: the document arrived in full. Only then is `usage` read from its end
/// (OpenAI and Anthropic put it last), which costs the size of the usage object instead
/// of a walk over the whole document (10% of a request's instructions). A document cut
/// short can end where a nested object does, so it gets the exact reading, which
/// refuses it.
fn usage_in_document(doc: &[u8], complete: bool) -> Option<UsageObject> {
    if complete {
        if let Some(u) = trailing_usage_fast(doc) {
            return Some(u);
        }
        if let Some(u) = trailing_usage(doc).and_then(UsageObject::parse) {
            return Some(u);
        }
    }
    let m = top_level_members(doc)?;
    usage_of(m.usage, m.message, m.response.and_then(|r| member(r, b"usage")))
}

/// The value of the document's last top-level member when that member is `usage` and
/// its value an object, found by walking back from the end. Walking back is exact: JSON
/// has no backslash outside strings, so a quote is a string's end or start unless an odd
/// run of backslashes precedes it, and an object's opening brace is where its own braces
/// balance. The last member is the one a conformant parser keeps of duplicates. Anything
/// unexpected (an escaped key too) gives `None`: the exact reading then decides.
fn trailing_usage(doc: &[u8]) -> Option<&[u8]> {
    let j = rskip_ws(doc, doc.len());
    if j == 0 || doc[j - 1] != b'}' {
        return None;
    }
    let end = rskip_ws(doc, j - 1);
    if end == 0 || doc[end - 1] != b'}' {
        return None;
    }
    let start = rmatching_brace(doc, end - 1)?;
    let k = rskip_ws(doc, start);
    if k == 0 || doc[k - 1] != b':' {
        return None;
    }
    let k = rskip_ws(doc, k - 1);
    const KEY: &[u8] = b"\"usage\"";
    if k < KEY.len() || &doc[k - KEY.len()..k] != KEY {
        return None;
    }
    // The key's opening quote follows the member separator or the object's opening
    // brace (not a backslash: then it was a longer key ending in `\"usage`).
    let p = rskip_ws(doc, k - KEY.len());
    if p == 0 || !matches!(doc[p - 1], b',' | b'{') {
        return None;
    }
    Some(&doc[start..end])
}

/// The usual case of [`trailing_usage`] and [`UsageObject::parse`] in one forward pass
/// over the usage object, for a complete document (valid JSON, as the client reads it):
/// the last `"usage"` key within the document's last [`TRAILING_WINDOW`] bytes is found
/// with memmem, its object read by [`UsageObject::parse_prefix`], and only a `}` may
/// follow it. That is exact for valid JSON: a quote after a `,` or `{` (white space
/// between) opens a string, which the `:` after it makes a key; its value ending where
/// the document's last `}` follows makes it a member of the outermost object, and its
/// last. A key after anything else is in no JSON document (a review found the fast path
/// reading `{"a":1"usage":{..}}`, which the walks and serde_json refuse). `None` for
/// anything else (another member order, a nested or escaped key, a strict grammar's
/// refusal): the walks then decide, as before.
fn trailing_usage_fast(doc: &[u8]) -> Option<UsageObject> {
    // The last key in the last `NEAR_WINDOW` bytes (a usage object is 150 to 300), else
    // in the rest of the window: the search costs what it reads.
    let last_key = |from: usize, to: usize| {
        let window = &doc[from..to];
        let mut k = None;
        let mut at = 0;
        while let Some(j) = USAGE_KEY.find(&window[at..]) {
            k = Some(from + at + j);
            at += j + 1;
        }
        k
    };
    let near = doc.len().saturating_sub(NEAR_WINDOW);
    let k = match last_key(near, doc.len()) {
        Some(k) => k,
        // The keys that start before `near`: the rest of the window.
        None if near > 0 => last_key(
            doc.len().saturating_sub(TRAILING_WINDOW),
            near + USAGE_KEY_LEN - 1,
        )?,
        None => return None,
    };
    // The opening quote follows a member separator or an object's opening brace (as in
    // `trailing_usage`): so it is not escaped, and is a key's, not a quote right after a
    // value in a document that is not JSON (`{"a":1"usage":{..}}`), which the walks refuse.
    let p = rskip_ws(doc, k);
    if p == 0 || !matches!(doc[p - 1], b',' | b'{') {
        return None;
    }
    let colon = skip_ws(doc, k + USAGE_KEY_LEN);
    if doc.get(colon) != Some(&b':') {
        return None;
    }
    let start = skip_ws(doc, colon + 1);
    let (u, len) = UsageObject::parse_prefix(doc.get(start..)?)?;
    let close = skip_ws(doc, start + len);
    (doc.get(close) == Some(&b'}') && skip_ws(doc, close + 1) == doc.len()).then_some(u)
}

/// For the fuzz target (`fuzzing::usage_scan`): on a document serde_json accepts, the
/// one-pass reading, where it answers, agrees with the walks.
pub(crate) fn check_trailing_fast(doc: &[u8]) {
    if let Some(fast) = trailing_usage_fast(doc) {
        let walked = top_level_members(doc)
            .and_then(|m| usage_of(m.usage, m.message, m.response.and_then(|r| member(r, b"usage"))));
        assert_eq!(
            Some(fast),
            walked,
            "the one-pass usage reading disagrees with the walk"
        );
    }
}

/// How far from a document's end [`trailing_usage_fast`] looks for its `usage` key, and
/// how far it looks first.
const TRAILING_WINDOW: usize = 4096;
const NEAR_WINDOW: usize = 320;
const USAGE_KEY_LEN: usize = b"\"usage\"".len();

/// Index just past the last non-whitespace byte before `end`.
fn rskip_ws(doc: &[u8], mut end: usize) -> usize {
    while end > 0 && matches!(doc[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    end
}

/// `doc[close]` is `}` outside any string: the index of its opening `{`.
fn rmatching_brace(doc: &[u8], close: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = close + 1;
    while i > 0 {
        i -= 1;
        match doc[i] {
            b'}' => depth += 1,
            b'{' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            // A string's closing quote: back to its opening one.
            b'"' => i = rstring_start(doc, i)?,
            _ => {}
        }
    }
    None
}

/// `doc[close]` closes a string: the index of its opening quote.
fn rstring_start(doc: &[u8], close: usize) -> Option<usize> {
    let mut end = close;
    loop {
        let q = memchr::memrchr(b'"', &doc[..end])?;
        let backslashes = doc[..q].iter().rev().take_while(|&&c| c == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(q);
        }
        end = q; // an escaped quote inside the string
    }
}

/// Raw values of the top-level members that may hold usage, when present.
#[derive(Debug, Default)]
struct UsageMembers<'a> {
    usage: Option<&'a [u8]>,
    message: Option<&'a [u8]>,
    response: Option<&'a [u8]>,
}

/// The raw values of the top-level members `usage`, `message` and `response` of a JSON
/// object as a conformant parser reads it (keys unescaped, the last of duplicates).
/// `None` when `doc` is not one object.
fn top_level_members(doc: &[u8]) -> Option<UsageMembers<'_>> {
    let mut r = TopLevel::new(false);
    let (mut usage, mut message, mut response) = (None, None, None);
    r.feed(doc, &mut |m: &Member| match m.key {
        Key::Usage => usage = Some(m.value_start..m.value_end),
        Key::Message => message = Some(m.value_start..m.value_end),
        Key::Response => response = Some(m.value_start..m.value_end),
        _ => {}
    });
    r.is_done().then(|| UsageMembers {
        usage: usage.map(|r| &doc[r]),
        message: message.map(|r| &doc[r]),
        response: response.map(|r| &doc[r]),
    })
}

/// The value of `name` in the object `v` (keys unescaped, the last of duplicates).
fn member<'a>(v: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut found = None;
    for m in Members::new(v)? {
        let (k, v) = m?;
        if key_is(k, name) {
            found = Some(v);
        }
    }
    found
}

/// Whether the raw key `raw` (between its quotes) reads `name` once unescaped.
fn key_is(raw: &[u8], name: &[u8]) -> bool {
    unescape_key(raw, &mut Vec::new()) == name
}

/// The raw key `raw` (between its quotes) unescaped, in `buf` when it has escapes (rare:
/// then decoded as a conformant parser does; an invalid key reads as empty).
fn unescape_key<'a>(raw: &'a [u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
    // Keys are short: words, not a memchr call (`bytescan`).
    if !crate::bytescan::has_byte(raw, b'\\') {
        return raw;
    }
    buf.clear();
    buf.push(b'"');
    buf.extend_from_slice(raw);
    buf.push(b'"');
    let decoded = serde_json::from_slice::<String>(buf).unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(decoded.as_bytes());
    buf
}

/// The members of a JSON object as (raw key, raw value) slices, found by a structural
/// walk: strings are skipped with memchr and nothing is decoded (keys compare as
/// written). Yields one `None` if the object is malformed or cut short.
struct Members<'a> {
    doc: &'a [u8],
    i: usize,
    done: bool,
}

impl<'a> Members<'a> {
    fn new(doc: &'a [u8]) -> Option<Self> {
        let i = skip_ws(doc, 0);
        (doc.get(i) == Some(&b'{')).then_some(Self {
            doc,
            i: i + 1,
            done: false,
        })
    }

    /// The next member; `Some(None)` at the end of the object, `None` when malformed.
    fn step(&mut self) -> Option<Option<(&'a [u8], &'a [u8])>> {
        let doc = self.doc;
        loop {
            self.i = skip_ws(doc, self.i);
            match doc.get(self.i)? {
                b'}' => return Some(None),
                b',' => self.i += 1,
                b'"' => break,
                _ => return None,
            }
        }
        let key_end = skip_string(doc, self.i)?;
        let key = &doc[self.i + 1..key_end - 1];
        let colon = skip_ws(doc, key_end);
        if doc.get(colon) != Some(&b':') {
            return None;
        }
        let start = skip_ws(doc, colon + 1);
        let end = skip_value(doc, start)?;
        self.i = end;
        Some(Some((key, &doc[start..end])))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = Option<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Some(Some(m)) => Some(Some(m)),
            Some(None) => {
                self.done = true;
                None
            }
            None => {
                self.done = true;
                Some(None)
            }
        }
    }
}

fn skip_ws(doc: &[u8], mut i: usize) -> usize {
    while doc
        .get(i)
        .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// `doc[i]` is the opening quote; returns the index just past the closing one.
fn skip_string(doc: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    // Keys and most values are short: 8-byte words before memchr (`bytescan`).
    if let Some((end, _)) = crate::bytescan::quote_or_backslash(doc, i, 64) {
        if doc[end] == b'"' {
            return Some(end + 1);
        }
    }
    loop {
        i += memchr::memchr2(b'"', b'\\', &doc[i..])?;
        if doc[i] == b'"' {
            return Some(i + 1);
        }
        i += 2; // an escape: skip the backslash and the escaped byte
        if i > doc.len() {
            return None;
        }
    }
}

/// Returns the index just past the value starting at `doc[i]`.
fn skip_value(doc: &[u8], mut i: usize) -> Option<usize> {
    match *doc.get(i)? {
        b'"' => skip_string(doc, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *doc.get(i)? {
                    b'"' => {
                        i = skip_string(doc, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            // A number or a literal: up to the next delimiter, or the end of the document.
            let n = doc[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(doc.len() - i);
            Some(i + n)
        }
    }
}

/// A `usage` object. Members of another type than expected read as absent.
#[derive(Debug, Default, PartialEq, Eq)]
struct UsageObject {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    /// Responses API: `input_tokens_details.cached_tokens` (part of `input_tokens`).
    input_cached_tokens: Option<u64>,
    /// Responses API: `output_tokens_details.reasoning_tokens` (part of `output_tokens`).
    output_reasoning_tokens: Option<u64>,
}

/// A JSON unsigned integer (no sign, fraction or exponent), else `None`.
fn json_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    // One pass with overflow checks (`str::parse` validated and walked it again).
    v.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(c - b'0')))
            .flatten()
    })
}

/// One member of a details object (`prompt_tokens_details.cached_tokens`, ...).
fn detail(v: &[u8], name: &[u8]) -> Option<u64> {
    // The usual object, written compactly with this one member (`{"cached_tokens":0}`):
    // read in place. That is what the walk reads of it too (one member, so no duplicate;
    // its key as written, with no escape), without walking it a second time (the usage
    // object's walk delimited it): half the cost of reading a usage object. Anything
    // else (spaces, more members, another value) takes the walk.
    let digits = v
        .strip_prefix(b"{\"")
        .and_then(|r| r.strip_prefix(name))
        .and_then(|r| r.strip_prefix(b"\":"))
        .and_then(|r| r.strip_suffix(b"}"))
        .filter(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit));
    if let Some(n) = digits.and_then(json_u64) {
        return Some(n);
    }
    member(v, name).and_then(json_u64)
}

impl UsageObject {
    /// `v` read as a usage object; `None` when it is not an object or is malformed.
    fn parse(v: &[u8]) -> Option<Self> {
        let mut u = Self::default();
        let mut unescaped = Vec::new();
        for m in Members::new(v)? {
            let (k, v) = m?;
            // Of duplicated keys the last counts, as in a conformant parser.
            match unescape_key(k, &mut unescaped) {
                b"prompt_tokens" => u.prompt_tokens = json_u64(v),
                b"completion_tokens" => u.completion_tokens = json_u64(v),
                b"total_tokens" => u.total_tokens = json_u64(v),
                b"prompt_tokens_details" => u.cached_tokens = detail(v, b"cached_tokens"),
                b"completion_tokens_details" => u.reasoning_tokens = detail(v, b"reasoning_tokens"),
                b"input_tokens" => u.input_tokens = json_u64(v),
                b"output_tokens" => u.output_tokens = json_u64(v),
                b"cache_read_input_tokens" => u.cache_read_input_tokens = json_u64(v),
                b"cache_creation_input_tokens" => u.cache_creation_input_tokens = json_u64(v),
                b"input_tokens_details" => u.input_cached_tokens = detail(v, b"cached_tokens"),
                b"output_tokens_details" => u.output_reasoning_tokens = detail(v, b"reasoning_tokens"),
                _ => {}
            }
        }
        Some(u)
    }

    /// The object at the start of `v` read in one pass, strictly (JSON's grammar: no
    /// stray comma), and the length it spans. Keys are compared as written: one with a
    /// backslash gives `None` (the general walk unescapes it), as does a count that is
    /// not a plain unsigned integer below 2^64 (the walk reads it as absent). Other
    /// values are skipped whole (`skip_value`). `None` sends the caller to the walk.
    fn parse_prefix(v: &[u8]) -> Option<(Self, usize)> {
        if v.first() != Some(&b'{') {
            return None;
        }
        let mut u = Self::default();
        let mut i = skip_ws(v, 1);
        if v.get(i) == Some(&b'}') {
            return Some((u, i + 1));
        }
        loop {
            if v.get(i) != Some(&b'"') {
                return None;
            }
            // The usual keys by their text (exact: the quote after a name's last letter
            // closes the key); any other key by a scan, which refuses escapes.
            let (field, after) = match known_key(v, i + 1) {
                Some(known) => known,
                None => (Field::Other, plain_key(v, i + 1)?),
            };
            let colon = skip_ws(v, after);
            if v.get(colon) != Some(&b':') {
                return None;
            }
            let j = skip_ws(v, colon + 1);
            let slot = match field {
                Field::PromptTokens => Slot::Count(&mut u.prompt_tokens),
                Field::CompletionTokens => Slot::Count(&mut u.completion_tokens),
                Field::TotalTokens => Slot::Count(&mut u.total_tokens),
                Field::InputTokens => Slot::Count(&mut u.input_tokens),
                Field::OutputTokens => Slot::Count(&mut u.output_tokens),
                Field::CacheReadInputTokens => Slot::Count(&mut u.cache_read_input_tokens),
                Field::CacheCreationInputTokens => Slot::Count(&mut u.cache_creation_input_tokens),
                Field::PromptTokensDetails => Slot::Detail(&mut u.cached_tokens, b"cached_tokens"),
                Field::CompletionTokensDetails => Slot::Detail(&mut u.reasoning_tokens, b"reasoning_tokens"),
                Field::InputTokensDetails => Slot::Detail(&mut u.input_cached_tokens, b"cached_tokens"),
                Field::OutputTokensDetails => {
                    Slot::Detail(&mut u.output_reasoning_tokens, b"reasoning_tokens")
                }
                Field::Other => Slot::Skip,
            };
            let end = match slot {
                Slot::Count(c) => {
                    let (n, end) = plain_count(v, j)?;
                    *c = Some(n);
                    end
                }
                Slot::Detail(c, name) => match compact_detail(v, j, name) {
                    Some((n, end)) => {
                        *c = Some(n);
                        end
                    }
                    None => {
                        let end = skip_value(v, j)?;
                        *c = detail(&v[j..end], name);
                        end
                    }
                },
                Slot::Skip => skip_value(v, j)?,
            };
            i = skip_ws(v, end);
            match v.get(i)? {
                b',' => i = skip_ws(v, i + 1),
                b'}' => return Some((u, i + 1)),
                _ => return None,
            }
        }
    }

    /// Merge into `u` (OpenAI fields, or Anthropic's `message_start`/`message_delta`).
    /// Returns whether any count was present.
    fn apply(&self, u: &mut Usage) -> bool {
        if self.prompt_tokens.is_some() || self.completion_tokens.is_some() {
            // OpenAI
            u.prompt_tokens = self.prompt_tokens.unwrap_or(0);
            u.completion_tokens = self.completion_tokens.unwrap_or(0);
            u.total_tokens = self
                .total_tokens
                .unwrap_or(u.prompt_tokens.saturating_add(u.completion_tokens));
            u.cached_tokens = self.cached_tokens.unwrap_or(0);
            u.reasoning_tokens = self.reasoning_tokens.unwrap_or(0);
            return true;
        }
        // Anthropic: message_start carries input (and a first output count); message_delta
        // carries the cumulative output count (and sometimes input counts again). Anthropic's
        // cache reads come on top of `input_tokens`.
        // The Responses API: one object, whose `input_tokens` already include the cached
        // ones (`input_tokens_details`), and `output_tokens` the reasoning ones.
        let mut found = false;
        if let Some(input) = self.input_tokens {
            let cache_read = self.cache_read_input_tokens.unwrap_or(0);
            let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
            u.prompt_tokens = input.saturating_add(cache_read).saturating_add(cache_write);
            u.cached_tokens = cache_read.saturating_add(self.input_cached_tokens.unwrap_or(0));
            u.cache_write_tokens = cache_write;
            found = true;
        }
        if let Some(out) = self.output_tokens {
            u.completion_tokens = out;
            u.reasoning_tokens = self.output_reasoning_tokens.unwrap_or(0);
            found = true;
        }
        u.total_tokens = u.prompt_tokens.saturating_add(u.completion_tokens);
        found
    }
}

/// The members of a usage object that count.
#[derive(Clone, Copy)]
enum Field {
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    InputTokens,
    OutputTokens,
    CacheReadInputTokens,
    CacheCreationInputTokens,
    PromptTokensDetails,
    CompletionTokensDetails,
    InputTokensDetails,
    OutputTokensDetails,
    Other,
}

/// The key whose text starts at `v[i]` (after its opening quote) when it is one of the
/// usage object's counted members written without escapes, and the index past its
/// closing quote. Compared by their fixed texts, the closing quote included: a scan for
/// the quote and a comparison of the key cost three times more.
fn known_key(v: &[u8], i: usize) -> Option<(Field, usize)> {
    let r = v.get(i..)?;
    macro_rules! key {
        ($text:literal, $f:expr) => {
            if r.starts_with($text) {
                return Some(($f, i + $text.len()));
            }
        };
    }
    match r.first()? {
        b'p' => {
            key!(b"prompt_tokens\"", Field::PromptTokens);
            key!(b"prompt_tokens_details\"", Field::PromptTokensDetails);
        }
        b'c' => {
            key!(b"completion_tokens\"", Field::CompletionTokens);
            key!(b"completion_tokens_details\"", Field::CompletionTokensDetails);
            key!(b"cache_read_input_tokens\"", Field::CacheReadInputTokens);
            key!(b"cache_creation_input_tokens\"", Field::CacheCreationInputTokens);
        }
        b't' => key!(b"total_tokens\"", Field::TotalTokens),
        b'i' => {
            key!(b"input_tokens\"", Field::InputTokens);
            key!(b"input_tokens_details\"", Field::InputTokensDetails);
        }
        b'o' => {
            key!(b"output_tokens\"", Field::OutputTokens);
            key!(b"output_tokens_details\"", Field::OutputTokensDetails);
        }
        _ => {}
    }
    None
}

/// Where [`UsageObject::parse_prefix`] puts a member's value.
enum Slot<'a> {
    Count(&'a mut Option<u64>),
    /// A details object and the member of it that counts.
    Detail(&'a mut Option<u64>, &'static [u8]),
    Skip,
}

/// The index past the closing quote of the key whose text starts at `v[i]` (after its
/// opening quote), when it holds neither a backslash nor a control byte.
fn plain_key(v: &[u8], i: usize) -> Option<usize> {
    // 8 bytes at a time (`bytescan`); the byte loop when a non-ASCII or control byte
    // comes first, or fewer than 8 bytes are left.
    if let Some((end, odd)) = crate::bytescan::quote_or_backslash(v, i, 64) {
        if !odd {
            return (v[end] == b'"').then_some(end + 1);
        }
    }
    let rest = v.get(i..)?;
    let n = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (rest[n] == b'"').then_some(i + n + 1)
}

/// A details object written compactly with the one member `name` and a count
/// (`{"cached_tokens":0}`) at `v[j]`: the count and the index past the object. What
/// [`detail`] reads of it, without delimiting it first.
fn compact_detail(v: &[u8], j: usize, name: &[u8]) -> Option<(u64, usize)> {
    let r = v
        .get(j..)?
        .strip_prefix(b"{\"")?
        .strip_prefix(name)?
        .strip_prefix(b"\":")?;
    let (n, end) = plain_count(v, v.len() - r.len())?;
    (v.get(end) == Some(&b'}')).then_some((n, end + 1))
}

/// The unsigned integer at `v[i]` and the index past it, when the value is one below
/// 2^64 (digits up to a delimiter: what `json_u64` reads of what `skip_value` delimits).
fn plain_count(v: &[u8], i: usize) -> Option<(u64, usize)> {
    let mut n = 0u64;
    let mut j = i;
    while let Some(&c) = v.get(j) {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        j += 1;
    }
    let delimited = v
        .get(j)
        .is_none_or(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
    (j > i && j - i <= 20 && delimited).then_some((n, j))
}

fn sse_line(line: &[u8], usage: &mut Usage, seen: &mut bool) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    if next_candidate(data).is_none() {
        return;
    }
    // An SSE line is only read once its newline arrived: it is complete.
    let Some(obj) = usage_in_document(data, true) else {
        return;
    };
    if obj.apply(usage) {
        *seen = true;
    }
}

/// After a key: its value is an object (`:` and white space, then `{`).
fn object_follows(after_key: &[u8]) -> bool {
    let j = after_key
        .iter()
        .position(|c| !(c.is_ascii_whitespace() || *c == b':'))
        .unwrap_or(after_key.len());
    after_key.get(j) == Some(&b'{')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn openai_json_and_sse() {
        let mut s = UsageScanner::new(false, true);
        s.observe(&Bytes::from_static(br#"{"id":"x","usage":{"prompt_tokens":3,"#));
        s.observe(&Bytes::from_static(
            br#""completion_tokens":4,"total_tokens":7}}"#,
        ));
        assert_eq!(s.finish(true).unwrap().total_tokens, 7);

        let mut s = UsageScanner::new(true, true);
        s.observe(&Bytes::from_static(
            b"data: {\"choices\":[{}]}\n\ndata: {\"choices\":[],\"us",
        ));
        s.observe(&Bytes::from_static(
            b"age\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\ndata: [DONE]\n\n",
        ));
        let u = s.finish(true).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (5, 6, 11));
    }

    /// The Responses API: a streamed answer books `response.completed`'s
    /// `response.usage`, however the event is cut and however long its output; the
    /// non-streamed body its top-level `usage` (not last: `user` and `metadata` follow).
    #[test]
    fn responses_usage_streamed_and_not() {
        let usage = r#"{"input_tokens":36,"input_tokens_details":{"cached_tokens":10},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}"#;
        let want = Usage {
            prompt_tokens: 36,
            completion_tokens: 87,
            total_tokens: 123,
            cached_tokens: 10,
            reasoning_tokens: 64,
            cache_write_tokens: 0,
        };
        for reply_len in [10, 100_000] {
            let reply = "w\\\"}{".repeat(reply_len);
            let object = |usage: &str| {
                format!(
                    r#"{{"id":"resp_1","object":"response","status":"completed","output":[{{"type":"message","content":[{{"type":"output_text","text":"{reply}","annotations":[]}}]}}],"usage":{usage},"user":null,"metadata":{{}}}}"#
                )
            };
            let stream = format!(
                "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{}}}\n\n\
                 event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"hi\"}}\n\n\
                 event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{}}}\n\n",
                object("null"),
                object(usage)
            );
            for read in [7, 4096, usize::MAX] {
                let mut s = UsageScanner::new(true, true);
                for c in stream.as_bytes().chunks(read.min(stream.len())) {
                    s.observe(&Bytes::copy_from_slice(c));
                }
                assert_eq!(s.finish(true), Some(want), "reply {reply_len}, reads of {read}");
                let body = object(usage);
                let mut s = UsageScanner::new(false, true);
                for c in body.as_bytes().chunks(read.min(body.len())) {
                    s.observe(&Bytes::copy_from_slice(c));
                }
                assert_eq!(s.finish(true), Some(want), "reply {reply_len}, reads of {read}");
            }
        }
    }

    #[test]
    fn anthropic_sse_sums_start_and_delta() {
        let mut s = UsageScanner::new(true, true);
        s.observe(&Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n"));
        s.observe(&Bytes::from_static(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ));
        let u = s.finish(true).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (10, 15, 25)
        );
    }

    #[test]
    fn json_usage_is_lenient_and_ignores_nested_keys() {
        let parse = |body: &'static [u8]| {
            let mut s = UsageScanner::new(false, true);
            s.observe(&Bytes::from_static(body));
            s.finish(true)
        };
        // Odd member types read as absent, not as a failed document.
        let u = parse(br#"{"choices":[{"message":{"content":"a \"usage\": {\"prompt_tokens\": 99}"}}],"usage":{"prompt_tokens":3,"completion_tokens":"x","total_tokens":null,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":2},"extra":[1,{"a":2}]}}"#).unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.reasoning_tokens
            ),
            (3, 0, 3, 2)
        );
        // Anthropic body, and `message.usage` when there is no top-level usage.
        let u = parse(
            br#"{"type":"message","usage":{"input_tokens":4,"cache_read_input_tokens":1,"output_tokens":5}}"#,
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.cached_tokens, u.completion_tokens), (5, 1, 5));
        // Cache writes are counted in the prompt and kept apart from cache reads.
        let u = parse(
            br#"{"usage":{"input_tokens":4,"cache_read_input_tokens":1,"cache_creation_input_tokens":6,"output_tokens":5}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.total_tokens
            ),
            (11, 1, 6, 16)
        );
        let u = parse(br#"{"usage":null,"message":{"usage":{"input_tokens":7}}}"#).unwrap();
        assert_eq!(u.prompt_tokens, 7);
        // No usage, a non-object usage, a nested usage only, broken JSON: nothing.
        assert!(parse(br#"{"id":"x"}"#).is_none());
        assert!(parse(br#"{"usage":12,"message":"hi"}"#).is_none());
        assert!(parse(br#"{"data":{"usage":{"prompt_tokens":1}}}"#).is_none());
        assert!(parse(br#"{"usage":{"prompt_tokens":1}"#).is_none());
    }

    #[test]
    fn cost_prices_each_token_class_once() {
        let p = Price {
            input: 3000,
            cached_input: 300,
            cache_write: 3750,
            output: 15_000,
            reasoning: 20_000,
        };
        let u = Usage {
            prompt_tokens: 1700,
            completion_tokens: 200,
            total_tokens: 1900,
            cached_tokens: 300,
            reasoning_tokens: 50,
            cache_write_tokens: 400,
        };
        // 1000 uncached, 300 read, 400 written; 150 output, 50 reasoning.
        let want = 1000 * 3000 + 300 * 300 + 400 * 3750 + 150 * 15_000 + 50 * 20_000;
        assert_eq!(p.cost(&u), want);
        assert_eq!(cost_of(Some(&p), &u), Some(want));
        // No price: unpriced when there were tokens, free only when there were none.
        assert_eq!(cost_of(None, &u), None);
        assert_eq!(cost_of(None, &Usage::default()), Some(0));
        // Counts that contradict each other (more cached than prompt, more reasoning
        // than completion) are never charged twice, and nothing overflows.
        let odd = Usage {
            prompt_tokens: 10,
            cached_tokens: 20,
            completion_tokens: 5,
            reasoning_tokens: 9,
            ..Usage::default()
        };
        assert_eq!(p.cost(&odd), 20 * 300 + 5 * 20_000);
        let huge = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..Usage::default()
        };
        assert_eq!(p.cost(&huge), u64::MAX);
    }

    /// The one-pass reading answers only for a `"usage"` key that follows a member
    /// separator or an object's opening brace. A quote right after a value (a missing
    /// comma, a string's closing quote, or nothing at all before it) is not a key's: such
    /// a document is not JSON, serde_json and both walks read no usage of it, and the
    /// fast path must leave it to them rather than bill the counts it finds.
    #[test]
    fn trailing_fast_refuses_a_key_that_follows_no_separator() {
        for doc in [
            &br#"{"a":{"b":1}"usage":{"prompt_tokens":5}}"#[..],
            br#"{"a":"x"usage":{"prompt_tokens":5}}"#,
            br#"{"a":[1]"usage":{"prompt_tokens":5}}"#,
            br#"{"a":1 "usage":{"prompt_tokens":5}}"#,
            br#"garbage"usage":{"prompt_tokens":5}}"#,
            br#""usage":{"prompt_tokens":5}}"#,
        ] {
            let text = String::from_utf8_lossy(doc);
            assert!(
                serde_json::from_slice::<serde_json::Value>(doc).is_err(),
                "{text}"
            );
            assert_eq!(trailing_usage(doc).and_then(UsageObject::parse), None, "{text}");
            assert!(top_level_members(doc).is_none(), "{text}");
            assert_eq!(trailing_usage_fast(doc), None, "{text}");
            assert!(usage_in_document(doc, true).is_none(), "{text}");
        }
        // The same member after a separator or a brace still reads in one pass.
        for doc in [
            &br#"{"a":{"b":1},"usage":{"prompt_tokens":5}}"#[..],
            br#"{"a":"x" , "usage":{"prompt_tokens":5}}"#,
            br#"{ "usage":{"prompt_tokens":5}}"#,
        ] {
            let fast = trailing_usage_fast(doc).and_then(|u| u.prompt_tokens);
            assert_eq!(fast, Some(5), "{}", String::from_utf8_lossy(doc));
        }
    }

    /// A details object read in place says what the walk says, and anything but the
    /// compact one-member form takes the walk.
    #[test]
    fn details_read_in_place_agree_with_the_walk() {
        for v in [
            &br#"{"cached_tokens":0}"#[..],
            br#"{"cached_tokens":1234}"#,
            br#"{"cached_tokens":99999999999999999999}"#,
            br#"{"cached_tokens":}"#,
            br#"{"cached_tokens":-1}"#,
            br#"{"cached_tokens":1.5}"#,
            br#"{"cached_tokens":"1"}"#,
            br#"{"cached_tokens":1,"cached_tokens":2}"#,
            br#"{"cached_tokens":1,"x":2}"#,
            br#"{ "cached_tokens": 7 }"#,
            br#"{"cached_tokenss":7}"#,
            br#"{"cached_tokens":7}"#,
            br#"{"reasoning_tokens":3}"#,
            br#"{}"#,
        ] {
            let walked = member(v, b"cached_tokens").and_then(json_u64);
            assert_eq!(
                detail(v, b"cached_tokens"),
                walked,
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        assert_eq!(detail(br#"{"cached_tokens":12}"#, b"cached_tokens"), Some(12));
        assert_eq!(detail(br#"{"cached_tokens":7}"#, b"cached_tokens"), Some(7));
        assert_eq!(
            detail(br#"{"cached_tokens":1,"cached_tokens":2}"#, b"cached_tokens"),
            Some(2)
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            // Quotes, backslashes, braces and brackets inside strings, and non-ASCII.
            "[a-z{}\\[\\]\"\\\\:, é\n]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z{}\"\\\\]{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The walker agrees with serde_json: every value skips to its end, and an
        /// object's members come out in document order with their exact raw values.
        #[test]
        fn walker_agrees_with_serde_json(v in json_value(), pretty in proptest::bool::ANY) {
            let doc = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
            proptest::prop_assert_eq!(skip_value(&doc, 0), Some(doc.len()));
            if let serde_json::Value::Object(map) = &v {
                let got: Vec<(Vec<u8>, serde_json::Value)> = Members::new(&doc)
                    .unwrap()
                    .map(|m| m.expect("well-formed"))
                    .map(|(k, raw)| (k.to_vec(), serde_json::from_slice(raw).unwrap()))
                    .collect();
                let want: Vec<(Vec<u8>, serde_json::Value)> = map
                    .iter()
                    .map(|(k, val)| {
                        let quoted = serde_json::to_vec(k).unwrap();
                        // Read back from text like the raw value is (serde_json's float
                        // reading is not exact, but the same on the same text).
                        let val = serde_json::from_slice(&serde_json::to_vec(val).unwrap()).unwrap();
                        (quoted[1..quoted.len() - 1].to_vec(), val)
                    })
                    .collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    proptest::proptest! {
        /// Read from the end or walked from the start, a trailing `usage` is the same
        /// value; a document without one at its end is left to the forward walk.
        #[test]
        fn trailing_usage_agrees_with_the_forward_walk(
            v in json_value(),
            usage in json_value(),
            trailing in proptest::bool::ANY,
            pretty in proptest::bool::ANY,
        ) {
            let serde_json::Value::Object(mut map) = v else { return Ok(()) };
            map.remove("usage");
            let body = if pretty { serde_json::to_string_pretty(&map) } else { serde_json::to_string(&map) }.unwrap();
            let doc = if trailing {
                // `usage` appended as the last member (serde's map would sort it).
                let inner = body.trim_end().strip_suffix('}').unwrap().trim_end();
                let sep = if inner.ends_with('{') { "" } else { "," };
                format!("{inner}{sep} \"usage\" : {} }}", serde_json::to_string(&usage).unwrap())
            } else {
                body
            };
            let doc = doc.as_bytes();
            let forward = top_level_members(doc).unwrap().usage;
            match trailing_usage(doc) {
                Some(raw) => {
                    proptest::prop_assert!(trailing && usage.is_object());
                    proptest::prop_assert_eq!(Some(raw), forward);
                }
                None => proptest::prop_assert!(!trailing || !usage.is_object()),
            }
            // Cut short anywhere: never a panic.
            for n in 0..doc.len() {
                let _ = trailing_usage(&doc[..n]);
            }
        }
    }

    proptest::proptest! {
        /// Digits only, up to 20 of them, and no overflow: what `str::parse` accepts.
        #[test]
        fn json_u64_is_parse_on_digits(v in proptest::string::bytes_regex("[0-9+\\-.eE ]{0,22}|[0-9]{18,22}").unwrap()) {
            let want = (v.len() <= 20 && v.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(&v).unwrap().parse::<u64>().ok())
                .flatten();
            proptest::prop_assert_eq!(json_u64(&v), want);
        }
    }

    /// SSE streams built from the lines OpenAI and Anthropic send (usage objects, `null`s,
    /// keys in strings, keep-alives, CRLF), cut into chunks anywhere: the chunk scanner
    /// counts what reading every complete line of the whole stream counts.
    #[test]
    fn sse_chunks_count_what_the_lines_count() {
        use proptest::prelude::*;
        let line = prop::sample::select(vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n",
            "data: {\"choices\":[],\"usage\": {\"prompt_tokens\":7,\"completion_tokens\":1}}\r\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":12}}\n",
            "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":8,\"input_tokens_details\":{\"cached_tokens\":3},\"output_tokens\":5,\"output_tokens_details\":{\"reasoning_tokens\":2}},\"user\":null},\"sequence_number\":7}\n",
            "data: {\"text\":\"\\\"usage\\\":{\"}\n",
            "event: usage\n",
            ": \"usage\":{}\n",
            "data: [DONE]\n",
            "\n",
        ]);
        proptest!(|(lines in prop::collection::vec(line, 0..16), cuts in prop::collection::vec(0usize..2000, 0..6))| {
            let text = lines.concat().into_bytes();
            let mut by_line = Usage::default();
            let mut seen = false;
            let complete = text.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
            for l in text[..complete].split(|&c| c == b'\n').filter(|_| complete > 0) {
                sse_line(l, &mut by_line, &mut seen);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
            cuts.sort_unstable();
            let mut s = UsageScanner::new(true, true);
            let mut at = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                s.observe(&Bytes::copy_from_slice(&text[at..c]));
                at = c;
            }
            prop_assert_eq!(s.finish(true), seen.then_some(by_line));
        });
    }

    /// What a conformant parser (serde_json) reads as a document's usage, merged into
    /// `u` with the scanner's rules; whether there was one.
    pub(crate) fn serde_apply(doc: &serde_json::Value, u: &mut Usage) -> bool {
        use serde_json::Value;
        let top = doc.get("usage").filter(|v| v.is_object());
        let Some(usage) = top
            .or_else(|| doc.get("message")?.get("usage").filter(|v| v.is_object()))
            .or_else(|| doc.get("response")?.get("usage").filter(|v| v.is_object()))
        else {
            return false;
        };
        let g = |k: &str| usage.get(k).and_then(Value::as_u64);
        if g("prompt_tokens").is_some() || g("completion_tokens").is_some() {
            u.prompt_tokens = g("prompt_tokens").unwrap_or(0);
            u.completion_tokens = g("completion_tokens").unwrap_or(0);
            u.total_tokens = g("total_tokens").unwrap_or(u.prompt_tokens.saturating_add(u.completion_tokens));
            u.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            u.reasoning_tokens = usage["completion_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .unwrap_or(0);
            return true;
        }
        let mut found = false;
        if let Some(input) = g("input_tokens") {
            let read = g("cache_read_input_tokens").unwrap_or(0);
            let write = g("cache_creation_input_tokens").unwrap_or(0);
            u.prompt_tokens = input.saturating_add(read).saturating_add(write);
            u.cached_tokens = read.saturating_add(
                usage
                    .get("input_tokens_details")
                    .and_then(|d| d.get("cached_tokens"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            );
            u.cache_write_tokens = write;
            found = true;
        }
        if let Some(out) = g("output_tokens") {
            u.completion_tokens = out;
            u.reasoning_tokens = usage
                .get("output_tokens_details")
                .and_then(|d| d.get("reasoning_tokens"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            found = true;
        }
        u.total_tokens = u.prompt_tokens.saturating_add(u.completion_tokens);
        found
    }

    /// `text` cut into reads at the points `cuts` picks.
    pub(crate) fn reads(text: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
        cuts.sort_unstable();
        let mut at = 0;
        let mut v = Vec::new();
        for c in cuts.into_iter().chain([text.len()]) {
            v.push(Bytes::copy_from_slice(&text[at..c]));
            at = c;
        }
        v
    }

    /// An SSE stream of generated chunks in random serialisations and framings, and the
    /// documents in it.
    pub(crate) fn sse_stream(r: &mut crate::toplevel::testgen::Rng) -> (Vec<u8>, Vec<serde_json::Value>) {
        use crate::toplevel::testgen::{document, serialise};
        let mut text = Vec::new();
        let mut docs = Vec::new();
        for _ in 0..r.below(7) {
            let nl: &[u8] = if r.chance(3) { b"\r\n" } else { b"\n" };
            if r.chance(6) {
                text.extend_from_slice(b": keep-alive");
                text.extend_from_slice(nl);
                text.extend_from_slice(nl);
            }
            let d = document(r, true);
            if r.chance(4) {
                text.extend_from_slice(b"event: chunk");
                text.extend_from_slice(nl);
            }
            text.extend_from_slice(if r.chance(2) { b"data: " } else { b"data:" });
            text.extend_from_slice(serialise(&d, r, true).as_bytes());
            text.extend_from_slice(nl);
            text.extend_from_slice(nl);
            docs.push(d);
        }
        text.extend_from_slice(b"data: [DONE]\n\n");
        (text, docs)
    }

    proptest::proptest! {
        /// Non-streamed answers in any serialisation (white space, member order, key
        /// escapes, duplicate `usage`), cut into reads anywhere: the scanner finds what
        /// serde_json reads.
        #[test]
        fn json_usage_is_what_serde_reads(seed in 1u64.., cuts in proptest::collection::vec(0usize..4000, 0..6)) {
            let mut r = crate::toplevel::testgen::Rng(seed);
            let doc = crate::toplevel::testgen::document(&mut r, false);
            let text = crate::toplevel::testgen::serialise(&doc, &mut r, false);
            let mut want = Usage::default();
            let want = serde_apply(&doc, &mut want).then_some(want);
            let mut s = UsageScanner::new(false, true);
            for c in reads(text.as_bytes(), &cuts) {
                s.observe(&c);
            }
            proptest::prop_assert_eq!(s.finish(true), want, "{}", text);
        }

        /// The one-pass reading of a trailing usage object, where it answers, reads what
        /// the walks read (and so what serde_json reads: the test above), on documents
        /// with any white space, member order, key escapes, duplicates and odd counts;
        /// and it answers for the usual compact and pretty-printed answers.
        #[test]
        fn trailing_fast_reads_what_the_walks_read(seed in 1u64.., stream in proptest::bool::ANY) {
            let mut r = crate::toplevel::testgen::Rng(seed);
            let doc = crate::toplevel::testgen::document(&mut r, stream);
            let text = crate::toplevel::testgen::serialise(&doc, &mut r, stream);
            let text = text.as_bytes();
            let walked = || {
                trailing_usage(text).and_then(UsageObject::parse).or_else(|| {
                    let m = top_level_members(text)?;
                    usage_of(m.usage, m.message, m.response.and_then(|r| member(r, b"usage")))
                })
            };
            if let Some(fast) = trailing_usage_fast(text) {
                proptest::prop_assert_eq!(Some(fast), walked(), "{}", String::from_utf8_lossy(text));
            }
            for plain in [serde_json::to_vec(&doc).unwrap(), serde_json::to_vec_pretty(&doc).unwrap()] {
                let usage_last = doc.get("usage").is_some_and(|u| {
                    u.is_object() && u.as_object().unwrap().values().all(|v| v.is_object() || v.as_u64().is_some())
                });
                // serde_json writes members sorted: `usage` is last when nothing sorts after it.
                let last = doc.as_object().is_some_and(|m| m.keys().all(|k| k.as_str() <= "usage"));
                let fast = trailing_usage_fast(&plain);
                if usage_last && last {
                    proptest::prop_assert!(fast.is_some(), "{}", String::from_utf8_lossy(&plain));
                }
                if fast.is_some() {
                    let m = top_level_members(&plain).unwrap();
                    proptest::prop_assert_eq!(fast, m.usage.and_then(UsageObject::parse));
                }
            }
            // Cut short anywhere: never a panic.
            for n in (0..text.len()).step_by(7) {
                let _ = trailing_usage_fast(&text[..n]);
            }
        }

        /// Streams of such chunks, cut into reads anywhere: the scanner counts what
        /// serde_json reads event by event.
        #[test]
        fn sse_usage_is_what_serde_reads(seed in 1u64.., cuts in proptest::collection::vec(0usize..4000, 0..10)) {
            let mut r = crate::toplevel::testgen::Rng(seed);
            let (text, docs) = sse_stream(&mut r);
            let mut want = Usage::default();
            let mut seen = false;
            for d in &docs {
                seen |= serde_apply(d, &mut want);
            }
            let mut s = UsageScanner::new(true, true);
            for c in reads(&text, &cuts) {
                s.observe(&c);
            }
            proptest::prop_assert_eq!(s.finish(true), seen.then_some(want), "{}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn a_body_over_the_kept_size_is_read_as_it_passes() {
        // `usage` first, spaced, escaped, and a reply longer than MAX_JSON_KEEP.
        let body = format!(
            "{{ \"usag\\u0065\" : {{ \"prompt_tokens\" : 7 , \"completion_tokens\" : 9 }} ,\n \"choices\" : [ {{ \"message\" : {{ \"content\" : \"{}\" }} }} ] }}",
            "x\\\"}".repeat(MAX_JSON_KEEP / 3)
        );
        let mut s = UsageScanner::new(false, true);
        for c in body.as_bytes().chunks(8192) {
            s.observe(&Bytes::copy_from_slice(c));
        }
        assert!(matches!(s, UsageScanner::Json { reader: Some(_), .. }));
        let u = s.finish(true).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (7, 9, 16));
        // Cut short: nothing.
        let mut s = UsageScanner::new(false, true);
        s.observe(&Bytes::copy_from_slice(&body.as_bytes()[..body.len() - 1]));
        assert_eq!(s.finish(false), None);
    }

    #[test]
    fn an_sse_line_over_64_kib_is_read() {
        let line = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}\n\n",
            "y".repeat(200 * 1024)
        );
        let mut s = UsageScanner::new(true, true);
        for c in line.as_bytes().chunks(5000) {
            s.observe(&Bytes::copy_from_slice(c));
        }
        assert_eq!(s.finish(true).unwrap().total_tokens, 3);
    }

    #[test]
    fn counts_saturate_and_odd_numbers_are_ignored() {
        let parse = |body: &[u8]| {
            let mut s = UsageScanner::new(false, true);
            s.observe(&Bytes::copy_from_slice(body));
            s.finish(true)
        };
        let u = parse(br#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":5}}"#).unwrap();
        assert_eq!(u.total_tokens, u64::MAX);
        let u =
            parse(br#"{"usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":9}}"#).unwrap();
        assert_eq!(u.prompt_tokens, u64::MAX);
        let u = parse(
            br#"{"usage":{"prompt_tokens":18446744073709551616,"completion_tokens":1.0,"total_tokens":-1}}"#,
        );
        assert_eq!(u, None);
        let u = parse(br#"{"usage":{"prompt_tokens":3,"completion_tokens":1e1,"total_tokens":-1}}"#).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (3, 0, 3));
    }

    #[test]
    fn trailing_usage_is_only_the_top_level_last_member() {
        let t = |d: &[u8]| trailing_usage(d).map(|u| String::from_utf8(u.to_vec()).unwrap());
        assert_eq!(
            t(br#"{"a":1,"usage":{"prompt_tokens":2}}"#).as_deref(),
            Some(r#"{"prompt_tokens":2}"#)
        );
        assert_eq!(
            t(br#"{"usage":{"x":"}\"{"}}"#).as_deref(),
            Some(r#"{"x":"}\"{"}"#)
        );
        // Nested, not last, not an object, or a longer key that ends in `usage`.
        assert_eq!(t(br#"{"a":{"usage":{"prompt_tokens":2}}}"#), None);
        assert_eq!(t(br#"{"usage":{"prompt_tokens":2},"b":1}"#), None);
        assert_eq!(t(br#"{"usage":[{"prompt_tokens":2}]}"#), None);
        assert_eq!(t(br#"{"my\"usage":{"prompt_tokens":2}}"#), None);
        assert_eq!(t(br#"{"a":"\\","usage":{"p":1}}"#).as_deref(), Some(r#"{"p":1}"#));
    }

    #[test]
    fn walker_finds_top_level_members_only() {
        let doc = br#" { "a\\" : "x\"}\\" , "n": -1.5e3, "arr": [1, {"usage": {"prompt_tokens": 9}}, "]"],
            "message" : {"usage":{"input_tokens":2}}, "usage" :{"prompt_tokens":4,"completion_tokens":1} } "#;
        let m = top_level_members(doc).unwrap();
        assert_eq!(m.usage.unwrap(), br#"{"prompt_tokens":4,"completion_tokens":1}"#);
        assert_eq!(m.message.unwrap(), br#"{"usage":{"input_tokens":2}}"#);
        assert_eq!(usage_in_document(doc, true).unwrap().prompt_tokens, Some(4));
        assert_eq!(usage_in_document(doc, false).unwrap().prompt_tokens, Some(4));
        // Every strict prefix is cut short: never a panic, never a usage.
        for n in 0..doc.len() - 2 {
            assert!(usage_in_document(&doc[..n], false).is_none(), "prefix {n}");
        }
        assert!(top_level_members(b"[1,2]").is_none());
        assert!(top_level_members(br#"{"a" 1}"#).is_none());
    }
}
