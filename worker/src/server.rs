//! The HTTP/1.1 server: accept loop with TCP_NODELAY and keep-alive on hyper directly
//! (no framework on the hot path), the per-connection head watchdog, and the graceful
//! drain on shutdown.
use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    body::{BoxError, ProxyBody},
    Shared,
};

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain: Duration,
    header_timeout: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // hyper's own header-read timeout arms, and then drops, a timer for every request
    // (about 3% of a request's instructions); `head_watchdog` keeps the same limit with
    // one timer per connection instead.
    builder.keep_alive(true).header_read_timeout(None);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let s = shared.clone();
        let memo = Arc::new(crate::auth::KeyMemo::default());
        let activity = Arc::new(Activity::default());
        let act = activity.clone();
        let svc = service_fn(move |req| {
            let answering = Answering::begin(&act);
            // Boxed: the connection task is sized for its largest state, and the request
            // future is large. Unboxed, every open connection (every open stream) kept
            // that space for its whole life; boxed, it is freed once the answer starts.
            let fut = Box::pin(crate::proxy::handle(s.clone(), req, memo.clone()));
            async move {
                let res = fut.await;
                Ok::<_, Infallible>(res.map(|body| Served {
                    body,
                    _answering: answering,
                }))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                biased;
                r = fut => if let Err(e) = r {
                    debug!(%peer, error = %e, "connection ended with an error");
                },
                () = head_watchdog(&activity, header_timeout) => {
                    debug!(%peer, timeout_ms = header_timeout.as_millis() as u64, "closing a connection that sent no request head in time");
                }
            }
        });
    }
    drop(listener);
    info!(
        drain_timeout_ms = drain.as_millis() as u64,
        "draining connections"
    );
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections drained"),
        _ = tokio::time::sleep(drain) => warn!("drain timeout reached; closing remaining connections"),
    }
}

/// What a connection's head watchdog reads: how many requests have started (their head
/// arrived) and how many are still being answered.
#[derive(Debug, Default)]
struct Activity {
    started: AtomicU64,
    answering: AtomicU32,
}

/// Held from a request head's arrival until hyper drops the response body (its last frame
/// was taken, or the connection ended): while one is held, the connection is not waiting
/// for a head.
#[derive(Debug)]
struct Answering(Arc<Activity>);

impl Answering {
    fn begin(a: &Arc<Activity>) -> Self {
        a.started.fetch_add(1, Relaxed);
        a.answering.fetch_add(1, Relaxed);
        Self(a.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Relaxed);
    }
}

/// Completes once the connection has waited a whole `limit` for a request head: idle on
/// keep-alive, or sent a head too slowly (slow loris). It looks every `limit / 2` and needs
/// two looks in a row with nothing answered and no head arrived since the look before, so
/// the connection is closed between `limit` and 1.5 × `limit` after its last response, or
/// at `limit` after it was accepted. A request being answered (a long stream, a slow
/// upload) is never cut: as with hyper's header-read timeout, the limit is for heads only.
async fn head_watchdog(activity: &Activity, limit: Duration) {
    let period = (limit / 2).max(Duration::from_millis(1));
    let mut looks = tokio::time::interval_at(Instant::now() + period, period);
    looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // (heads started, waiting for a head) at the last look; a new connection waits.
    let mut last = (0, true);
    let mut quiet = 0;
    loop {
        looks.tick().await;
        let now = (
            activity.started.load(Relaxed),
            activity.answering.load(Relaxed) == 0,
        );
        // Waiting at both looks with no head in between: waiting the whole period.
        quiet = if now.1 && now == last { quiet + 1 } else { 0 };
        if quiet == 2 {
            return;
        }
        last = now;
    }
}

/// The response body with the request's `Answering` guard.
struct Served {
    body: ProxyBody,
    _answering: Answering,
}

impl Body for Served {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    /// Runs `meanwhile` beside the connection's watchdog, which must not fire; then
    /// returns how long after that the watchdog closed the connection.
    async fn closed_after(a: &Activity, meanwhile: impl std::future::Future<Output = ()>) -> Duration {
        let w = head_watchdog(a, LIMIT);
        tokio::pin!(w);
        tokio::select! {
            biased;
            () = &mut w => panic!("closed while answering or while heads kept arriving"),
            () = meanwhile => {}
        }
        let t = Instant::now();
        w.await;
        t.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_head_is_closed_at_the_limit() {
        assert_eq!(closed_after(&Activity::default(), async {}).await, LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_answer_is_never_cut_and_the_idle_time_after_it_is() {
        let a = Arc::new(Activity::default());
        let answering = Answering::begin(&a);
        let idle = closed_after(&a, async move {
            tokio::time::sleep(LIMIT * 10).await;
            drop(answering);
        })
        .await;
        assert!(
            idle >= LIMIT && idle <= LIMIT * 3 / 2,
            "closed {idle:?} after the last answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heads_arriving_within_the_limit_keep_the_connection() {
        let a = Arc::new(Activity::default());
        let idle = closed_after(&a, async {
            for _ in 0..20 {
                // Just under the limit apart, each answered at once.
                tokio::time::sleep(LIMIT - Duration::from_secs(1)).await;
                drop(Answering::begin(&a));
            }
        })
        .await;
        assert!(
            idle >= LIMIT && idle <= LIMIT * 3 / 2,
            "closed {idle:?} after the last answer"
        );
    }
}
