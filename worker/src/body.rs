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
            let enough_until = Duration::try_from_secs_f64(received as f64 / self.min_rate as f64)
                .map_or(FAR, |d| d.min(FAR));
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{Full, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    type Item = Result<Frame<Bytes>, Infallible>;
    type Tx = mpsc::Sender<Item>;

    fn channel_body() -> (Tx, StreamBody<ReceiverStream<Item>>) {
        let (tx, rx) = mpsc::channel(16);
        (tx, StreamBody::new(ReceiverStream::new(rx)))
    }

    fn limits(timeout_s: u64, min_rate: u64, grace_s: u64) -> BodyLimits {
        BodyLimits {
            timeout: Duration::from_secs(timeout_s),
            min_rate,
            grace: Duration::from_secs(grace_s),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_there_at_once_is_read_whole_and_one_announced_too_large_is_refused() {
        let b = Bytes::from_static(b"{\"model\":\"m\"}");
        let got = read_body(Full::new(b.clone()), 100, &BodyLimits::default())
            .await
            .unwrap();
        assert_eq!(got, b);
        assert_eq!(got.as_ptr(), b.as_ptr(), "one frame is handed on, not copied");
        let e = read_body(Full::new(b), 5, &BodyLimits::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::TooLarge(5)), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_are_joined_and_the_size_limit_counts_what_arrives() {
        let (tx, body) = channel_body();
        for part in ["ab", "cd", "ef"] {
            tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
        }
        drop(tx);
        assert_eq!(
            read_body(body, 6, &BodyLimits::default()).await.unwrap(),
            "abcdef"
        );
        let (tx, body) = channel_body();
        tx.send(Ok(Frame::data(Bytes::from("abcdefg")))).await.unwrap();
        let e = read_body(body, 6, &BodyLimits::default()).await.unwrap_err();
        assert!(matches!(e, ProxyError::TooLarge(6)), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_at_the_deadline() {
        let (tx, body) = channel_body();
        tx.send(Ok(Frame::data(Bytes::from("part")))).await.unwrap();
        let t0 = Instant::now();
        let e = read_body(body, 100, &limits(5, 0, 0)).await.unwrap_err();
        assert!(matches!(e, ProxyError::BodyTimeout), "{e:?}");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_millis(5100),
            "{took:?}"
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_minimum_rate_is_cut_once_the_grace_is_over() {
        // 10 bytes each 200 ms: 50 B/s, under 100 B/s.
        let (tx, body) = channel_body();
        let feed = tokio::spawn(async move {
            loop {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(&[b' '; 10]))))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let t0 = Instant::now();
        let e = read_body(body, 1 << 20, &limits(60, 100, 2)).await.unwrap_err();
        assert!(matches!(e, ProxyError::BodyTimeout), "{e:?}");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        feed.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_minimum_rate_is_read_whole() {
        // 150 bytes each second for 8 s, over a minimum of 100 B/s.
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for _ in 0..8 {
                tx.send(Ok(Frame::data(Bytes::from_static(&[b' '; 150]))))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let got = read_body(body, 1 << 20, &limits(60, 100, 2)).await.unwrap();
        assert_eq!(got.len(), 1200);
    }

    #[test]
    fn absurd_limits_do_not_overflow() {
        let l = BodyLimits {
            timeout: Duration::MAX,
            min_rate: 1,
            grace: Duration::MAX,
        };
        let now = Instant::now();
        assert!(l.check(now, now, u64::MAX).is_ok());
    }
}
