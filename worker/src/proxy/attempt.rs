//! Attempt phase, the only one that does I/O before the answer is relayed: send the
//! request to one `route::Target` under its per-try deadline (`upstream::Client`), and hold a
//! successful SSE answer back until its first event, so that a stream that dies before
//! it can still be retried elsewhere. What happened is an [`Attempt`], for `classify`.
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::BodyExt;

use crate::{extract, upstream};

/// What one attempt came to.
// Boxing the answer would cost an allocation per request; the value moves a few times
// within one request's future.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Attempt {
    /// No response head before the deadline.
    HeadTimeout,
    /// The exchange failed: no connection, or the connection failed before a head.
    SendFailed(upstream::Error),
    /// A 2xx SSE answer whose first event did not come before the deadline.
    FirstEventTimeout,
    /// A 2xx SSE answer that broke before its first event.
    StreamFailed(upstream::Error),
    /// An answer: its head, and for a 2xx SSE answer its first event.
    Answered(Answer),
}

/// An upstream answer, not yet relayed.
#[derive(Debug)]
pub struct Answer {
    pub head: http::response::Parts,
    pub body: upstream::Body,
    /// The first event of a 2xx SSE answer (`None`: not SSE, not 2xx, or it ended empty).
    pub first: Option<Bytes>,
    pub sse: bool,
    /// From sending to the head (SSE: to the first event).
    pub ttfb: Duration,
}

impl Answer {
    pub fn status(&self) -> u16 {
        self.head.status.as_u16()
    }
}

pub fn is_sse(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Send `head` and `body` with `client` (a target's provider's), and wait up to
/// `header_timeout` (the target's) for the answer and an SSE 2xx answer's first event.
pub async fn send(
    client: &upstream::Client,
    header_timeout: Duration,
    head: upstream::RequestHead,
    body: extract::Parts,
) -> Attempt {
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + header_timeout;
    let resp = match tokio::time::timeout_at(deadline, client.send(head, body.as_slice())).await {
        Err(_) => return Attempt::HeadTimeout,
        Ok(Err(e)) => return Attempt::SendFailed(e),
        Ok(Ok(r)) => r,
    };
    let sse = is_sse(resp.headers());
    let (head, mut body) = resp.into_parts();
    let mut first = None;
    if sse && head.status.is_success() {
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Attempt::FirstEventTimeout,
                Ok(Some(Err(e))) => return Attempt::StreamFailed(e),
                Ok(None) => break,
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        if !d.is_empty() {
                            first = Some(d);
                            break;
                        }
                    }
                }
            }
        }
    }
    Attempt::Answered(Answer {
        head,
        body,
        first,
        sse,
        ttfb: t0.elapsed(),
    })
}
