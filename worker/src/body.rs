//! Bodies: reading a client's request body under its limits (`read_body`), and the
//! response body type the server writes: a complete local body (errors, health, metrics)
//! or a relayed upstream stream.
use std::{
    future::Future as _,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::{errors::ProxyError, relay::RelayBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum ProxyBody {
    Full(Option<Bytes>),
    Relay(Box<RelayBody>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            Self::Relay(r) => Pin::new(r.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Self::Relay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Relay(r) => r.size_hint(),
        }
    }
}

/// Limits on reading a request body, besides its size (`Config::body_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The whole body must arrive within this, counted from the first wait for it.
    pub timeout: Duration,
    /// Once `grace` has passed, at least this many bytes per second on average since the
    /// first wait; 0: no minimum rate.
    pub min_rate: u64,
    pub grace: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            min_rate: 1024,
            grace: Duration::from_secs(10),
        }
    }
}

/// Longer than any limit needs; keeps `Instant` arithmetic from overflowing.
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

impl BodyLimits {
    /// When the body read must be looked at next, after a check at `now` found it in time
    /// with `received` bytes; `Err` when it is too late or too slow.
    fn check(&self, start: Instant, now: Instant, received: u64) -> Result<Instant, ProxyError> {
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= self.timeout {
            return Err(ProxyError::BodyTimeout);
        }
        let mut next = start + self.timeout.min(FAR);
        if self.min_rate > 0 {
            // Too slow once `received < min_rate × elapsed`, that is from `received /
            // min_rate` seconds after the start on, if nothing more arrives.
            let enough_until =
                Duration::try_from_secs_f64(received as f64 / self.min_rate as f64).map_or(FAR, |d| d.min(FAR));
            if elapsed >= self.grace && elapsed > enough_until {
                return Err(ProxyError::BodyTimeout);
            }
            next = next.min(start + self.grace.max(enough_until).min(FAR));
        }
        // Never a deadline in the past (it would be checked again at once, forever).
        Ok(next.max(now + Duration::from_millis(1)))
    }
}

/// Reads a request body whole, as `Bytes` (one frame: its own `Bytes`, no copy), under
/// the size `limit` and `limits`' deadline and minimum rate.
///
/// A body already there when the read starts (most are: they come with the head) costs
/// no timer; one is armed at the first wait. A body announced larger than `limit` is
/// refused before a byte of it is read.
pub async fn read_body<B>(body: B, limit: usize, limits: &BodyLimits) -> Result<Bytes, ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut body = body;
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Err(ProxyError::TooLarge(limit));
    }
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut received: u64 = 0;
    let mut clock: Option<(Instant, Pin<Box<Sleep>>)> = None;
    loop {
        let step = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Ok(f)),
            Poll::Pending => {
                let (start, sleep) = clock.get_or_insert_with(|| {
                    let now = Instant::now();
                    let first_look = limits.check(now, now, 0).unwrap_or(now);
                    (now, Box::pin(tokio::time::sleep_until(first_look)))
                });
                loop {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    match limits.check(*start, Instant::now(), received) {
                        Ok(next) => sleep.as_mut().reset(next),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
        })
        .await?;
        let data = match step {
            None => break,
            Some(Err(e)) => {
                return Err(ProxyError::BadRequest(format!(
                    "could not read the request body: {e}"
                )))
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
        };
        received += data.len() as u64;
        if received > limit as u64 {
            return Err(ProxyError::TooLarge(limit));
        }
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let cap = (hint.lower() as usize).max(f.len() + data.len()).min(limit);
                let mut m = BytesMut::with_capacity(cap);
                m.extend_from_slice(f);
                m.extend_from_slice(&data);
                more = Some(m);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&data),
        }
    }
    Ok(match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    })
}
