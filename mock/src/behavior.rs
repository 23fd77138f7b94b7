//! What the mock does with a request: the serde-friendly `Behavior` script and its parts.
//!
//! The same JSON drives the mock in-process (`MockServer::set_default`) and over HTTP
//! (`POST /_mock/default`), so every field has a default and unknown fields are rejected
//! (a typo in a test script should fail loudly, not silently do nothing).

use serde::{Deserialize, Serialize};

/// Default assistant text. Its length makes the default non-stream chat completion about
/// 650 bytes, the size the benchmark budget is stated for.
pub const DEFAULT_REPLY: &str =
    "This is a canned reply from switchyard-mock, the scriptable upstream used by the \
Switchyard tests and benchmark. It is long enough that the response has a realistic size, \
and short enough that it costs nothing to send over loopback. Nothing in it matters except \
its size, which is close to what a short chat answer weighs.";

/// One script for how to answer a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// Wait this long before sending the response headers.
    pub latency_ms: u64,
    /// Force this error status, with an error body in the request's dialect.
    pub status: Option<u16>,
    /// Sent as `retry-after` (seconds) with an error status (usually 429).
    pub retry_after_s: Option<u64>,
    /// Connection-level fault to inject.
    pub fault: Fault,
    /// Content chunks in a streamed response.
    pub stream_chunks: usize,
    /// Delay before each content chunk of a stream.
    pub chunk_delay_ms: u64,
    /// Assistant text.
    pub reply: String,
    /// Token counts reported in usage blocks.
    pub usage: Usage,
    /// How the JSON of answers (bodies and SSE events) is serialised. A long `reply`
    /// makes a non-streamed answer as large as wanted (e.g. over the worker's 256 KiB).
    pub json_style: JsonStyle,
    /// Requests carrying one of these credentials get a 401 in their dialect.
    pub reject_credentials: Vec<String>,
    /// Requests carrying this header (any value) get a 401 in their dialect: an upstream
    /// that reads an account from a client header.
    pub reject_header: Option<String>,
}

/// The serialisation of the mock's JSON, for testing readers that must not assume one.
///
/// JSON: `"compact"` (default, serde_json's: no white space, keys sorted), `"spaced"`
/// (white space around every token: new lines in bodies, spaces in SSE events, which
/// must stay on one line), `"hostile"` (spaced, the top-level `usage` member first, and
/// the keys `usage` and `choices` written with `\u` escapes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonStyle {
    #[default]
    Compact,
    Spaced,
    Hostile,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            latency_ms: 0,
            status: None,
            retry_after_s: None,
            fault: Fault::None,
            stream_chunks: 5,
            chunk_delay_ms: 0,
            reply: DEFAULT_REPLY.to_string(),
            usage: Usage::default(),
            json_style: JsonStyle::Compact,
            reject_credentials: Vec::new(),
            reject_header: None,
        }
    }
}

impl Behavior {
    /// A behaviour that answers with `status` (and the dialect's error body).
    pub fn error(status: u16) -> Self {
        Behavior {
            status: Some(status),
            ..Behavior::default()
        }
    }

    /// A 429 with `retry-after: secs`.
    pub fn rate_limited(secs: u64) -> Self {
        Behavior {
            status: Some(429),
            retry_after_s: Some(secs),
            ..Behavior::default()
        }
    }

    /// A behaviour with only the fault set.
    pub fn fault(fault: Fault) -> Self {
        Behavior {
            fault,
            ..Behavior::default()
        }
    }

    /// A behaviour that waits `ms` before the response headers.
    pub fn latency(ms: u64) -> Self {
        Behavior {
            latency_ms: ms,
            ..Behavior::default()
        }
    }
}

/// Connection-level faults.
///
/// JSON: `"none"`, `"drop"`, `"hang"`, `{"cut_stream":{"after_chunks":2}}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Close the connection without answering.
    Drop,
    /// Never answer (until the mock shuts down).
    Hang,
    /// Send the headers and `after_chunks` content chunks, then abort the connection.
    /// A non-stream response is cut after half of its body.
    CutStream { after_chunks: usize },
}

/// Token counts the mock reports.
///
/// OpenAI: `prompt_tokens`, `completion_tokens`, `total_tokens`,
/// `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`.
/// Anthropic: `input_tokens` = `prompt_tokens`, `output_tokens` = `completion_tokens`,
/// `cache_read_input_tokens` = `cached_tokens`, `cache_creation_input_tokens` =
/// `cache_write_tokens` (which OpenAI's wire format has no field for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cache_write_tokens: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            prompt_tokens: 12,
            completion_tokens: 48,
            cached_tokens: 0,
            reasoning_tokens: 0,
            cache_write_tokens: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn empty_json_is_the_default() {
        let b: Behavior = serde_json::from_str("{}").unwrap();
        assert_eq!(b, Behavior::default());
        assert_eq!(b.stream_chunks, 5);
    }

    #[test]
    fn faults_parse_from_json() {
        let b: Behavior = serde_json::from_str(r#"{"fault":{"cut_stream":{"after_chunks":2}}}"#).unwrap();
        assert_eq!(b.fault, Fault::CutStream { after_chunks: 2 });
        let b: Behavior = serde_json::from_str(r#"{"fault":"hang","status":429}"#).unwrap();
        assert_eq!(b.fault, Fault::Hang);
        assert_eq!(b.status, Some(429));
    }

    #[test]
    fn json_style_parses() {
        let b: Behavior = serde_json::from_str(r#"{"json_style":"hostile"}"#).unwrap();
        assert_eq!(b.json_style, JsonStyle::Hostile);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<Behavior>(r#"{"latncy_ms":3}"#).is_err());
    }
}
