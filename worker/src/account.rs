//! Usage accounting hook: the `UsageEvent` each finished request produces, a bounded,
//! non-blocking sink for it, and the token counting that reads the upstream's own
//! `usage` from a complete JSON body or from SSE frames as they pass.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use bytes::Bytes;

/// Token counts reported by the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
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
    pub key_id: String,
    pub key_name: String,
    pub model: String,
    pub backend: String,
    pub provider: String,
    pub credential: String,
    pub endpoint: String,
    pub status: u16,
    pub stream: bool,
    pub retries: u32,
    pub latency_us: u64,
    pub ttfb_us: u64,
    pub usage: Usage,
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

/// Bodies above this size are not kept for usage parsing (non-streaming JSON only).
const MAX_JSON_KEEP: usize = 256 * 1024;
/// A partial SSE line longer than this is skipped (usage lines are short).
const MAX_SSE_LINE: usize = 64 * 1024;

/// Watches response chunks for usage; keeps `Bytes` handles (no copies) for a JSON body,
/// and only the unfinished tail line for SSE.
#[derive(Debug)]
pub enum UsageScanner {
    Off,
    Json {
        chunks: Vec<Bytes>,
        len: usize,
    },
    Sse {
        partial: Vec<u8>,
        skipping: bool,
        usage: Usage,
        seen: bool,
    },
}

impl UsageScanner {
    pub fn new(sse: bool, success: bool) -> Self {
        match (success, sse) {
            (false, _) => Self::Off,
            (true, true) => Self::Sse {
                partial: Vec::new(),
                skipping: false,
                usage: Usage::default(),
                seen: false,
            },
            (true, false) => Self::Json {
                chunks: Vec::new(),
                len: 0,
            },
        }
    }

    pub fn observe(&mut self, chunk: &Bytes) {
        match self {
            Self::Off => {}
            Self::Json { chunks, len } => {
                *len += chunk.len();
                if *len > MAX_JSON_KEEP {
                    *self = Self::Off;
                } else {
                    chunks.push(chunk.clone());
                }
            }
            Self::Sse {
                partial,
                skipping,
                usage,
                seen,
            } => {
                let mut rest: &[u8] = chunk;
                while let Some(nl) = memchr::memchr(b'\n', rest) {
                    let line = &rest[..nl];
                    if *skipping {
                        *skipping = false;
                    } else if partial.is_empty() {
                        sse_line(line, usage, seen);
                    } else {
                        partial.extend_from_slice(line);
                        let l = std::mem::take(partial);
                        sse_line(&l, usage, seen);
                    }
                    rest = &rest[nl + 1..];
                }
                if !rest.is_empty() && !*skipping {
                    if partial.len() + rest.len() > MAX_SSE_LINE {
                        partial.clear();
                        *skipping = true;
                    } else {
                        partial.extend_from_slice(rest);
                    }
                }
            }
        }
    }

    /// The counts seen so far (for a JSON body: only when it parsed completely).
    pub fn finish(&mut self) -> Option<Usage> {
        match self {
            Self::Off => None,
            Self::Json { chunks, .. } => {
                // Only `usage` (OpenAI) and `message.usage` are kept; every other member
                // is skipped by the parser without building a `Value` tree (that tree
                // was ~7% of the worker's CPU per non-streaming request).
                let doc: UsageDoc = if chunks.len() == 1 {
                    serde_json::from_slice(&chunks[0]).ok()?
                } else {
                    serde_json::from_slice(&chunks.concat()).ok()?
                };
                let usage = [
                    doc.usage,
                    doc.message
                        .and_then(|mut m| m.get_mut("usage").map(serde_json::Value::take)),
                ]
                .into_iter()
                .flatten()
                .find(serde_json::Value::is_object)?;
                let mut u = Usage::default();
                apply_usage(&serde_json::json!({ "usage": usage }), &mut u).then_some(u)
            }
            Self::Sse { usage, seen, .. } => seen.then_some(*usage),
        }
    }
}

/// The parts of a non-streaming JSON response body that can carry usage.
#[derive(serde::Deserialize)]
struct UsageDoc {
    #[serde(default)]
    usage: Option<serde_json::Value>,
    /// A `Value` so that a non-object `message` does not fail the whole parse.
    #[serde(default)]
    message: Option<serde_json::Value>,
}

fn sse_line(line: &[u8], usage: &mut Usage, seen: &mut bool) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    if !has_usage_object(data) {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if apply_usage(&v, usage) {
        *seen = true;
    }
}

/// Whether `data` has a `"usage"` key whose value is an object. OpenAI stream chunks
/// carry `"usage":null` when usage was requested: parsing those would cost a JSON parse
/// per chunk for nothing.
fn has_usage_object(data: &[u8]) -> bool {
    let mut rest = data;
    while let Some(i) = memchr::memmem::find(rest, b"\"usage\"") {
        rest = &rest[i + 7..];
        let mut j = 0;
        while rest.get(j).is_some_and(|c| c.is_ascii_whitespace() || *c == b':') {
            j += 1;
        }
        if rest.get(j) == Some(&b'{') {
            return true;
        }
    }
    false
}

fn n(v: &serde_json::Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

/// Merge the usage found in one JSON document (OpenAI body or chunk, Anthropic body,
/// `message_start` or `message_delta`) into `u`. Returns whether any was found.
fn apply_usage(v: &serde_json::Value, u: &mut Usage) -> bool {
    let usage = match (v.get("usage"), v.get("message").and_then(|m| m.get("usage"))) {
        (Some(x), _) if x.is_object() => x,
        (_, Some(x)) if x.is_object() => x,
        _ => return false,
    };
    if usage.get("prompt_tokens").is_some() || usage.get("completion_tokens").is_some() {
        // OpenAI
        u.prompt_tokens = n(usage, &["prompt_tokens"]).unwrap_or(0);
        u.completion_tokens = n(usage, &["completion_tokens"]).unwrap_or(0);
        u.total_tokens = n(usage, &["total_tokens"]).unwrap_or(u.prompt_tokens + u.completion_tokens);
        u.cached_tokens = n(usage, &["prompt_tokens_details", "cached_tokens"]).unwrap_or(0);
        u.reasoning_tokens = n(usage, &["completion_tokens_details", "reasoning_tokens"]).unwrap_or(0);
        return true;
    }
    // Anthropic: message_start carries input (and a first output count); message_delta
    // carries the cumulative output count (and sometimes input counts again).
    let mut found = false;
    if let Some(input) = n(usage, &["input_tokens"]) {
        let cache_read = n(usage, &["cache_read_input_tokens"]).unwrap_or(0);
        let cache_write = n(usage, &["cache_creation_input_tokens"]).unwrap_or(0);
        u.prompt_tokens = input + cache_read + cache_write;
        u.cached_tokens = cache_read;
        found = true;
    }
    if let Some(out) = n(usage, &["output_tokens"]) {
        u.completion_tokens = out;
        found = true;
    }
    u.total_tokens = u.prompt_tokens + u.completion_tokens;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_json_and_sse() {
        let mut s = UsageScanner::new(false, true);
        s.observe(&Bytes::from_static(br#"{"id":"x","usage":{"prompt_tokens":3,"#));
        s.observe(&Bytes::from_static(
            br#""completion_tokens":4,"total_tokens":7}}"#,
        ));
        assert_eq!(s.finish().unwrap().total_tokens, 7);

        let mut s = UsageScanner::new(true, true);
        s.observe(&Bytes::from_static(
            b"data: {\"choices\":[{}]}\n\ndata: {\"choices\":[],\"us",
        ));
        s.observe(&Bytes::from_static(
            b"age\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\ndata: [DONE]\n\n",
        ));
        let u = s.finish().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total_tokens), (5, 6, 11));
    }

    #[test]
    fn anthropic_sse_sums_start_and_delta() {
        let mut s = UsageScanner::new(true, true);
        s.observe(&Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n"));
        s.observe(&Bytes::from_static(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n",
        ));
        let u = s.finish().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (10, 15, 25)
        );
    }
}
