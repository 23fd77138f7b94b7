//! The HTTP/1.1 server: accept loop with TCP_NODELAY and keep-alive on hyper directly
//! (no framework on the hot path), the connections' header-read and send limits, and the
//! graceful drain on shutdown.
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{
            AtomicU32, AtomicU64, AtomicU8,
            Ordering::{AcqRel, Acquire, Relaxed},
        },
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashMap;
use futures::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{rt::TokioIo, server::graceful::GracefulConnection};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};
use tracing::{debug, info, warn};

use crate::{
    body::{BoxError, ProxyBody},
    Shared,
};

/// The per-connection time limits (`Config::header_timeout`, `Config::send_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Waiting for a request head (idle keep-alive included).
    pub header: Duration,
    /// A response write left pending (the client does not read).
    pub send: Duration,
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain: Duration,
    limits: Limits,
) {
    let header_timeout = limits.header;
    let mut builder = http1::Builder::new();
    // hyper's own header-read timeout arms, and then drops, a timer for every request
    // (about 3% of a request's instructions); `Conns` keeps the same limit with one timer
    // for all connections.
    builder.keep_alive(true).header_read_timeout(None);
    let conns = Conns::new(limits);
    let looking = AbortOnDropHandle::new(tokio::spawn(conns.clone().look_every_period()));
    let tasks = TaskTracker::new();
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
        let (conn, listed) = conns.add();
        let c = conn.clone();
        let svc = service_fn(move |req| {
            let answering = Answering::begin(&c);
            // Boxed: the connection task is sized for its largest state, and the request
            // future is large. Unboxed, every open connection (every open stream) kept
            // that space for its whole life; boxed, it is freed once the answer starts.
            // The box is allocated before the future is made, so that the future can be
            // written straight into it: `Box::pin(future)` made it on the stack and
            // copied all of it (its unused states too) into the box, on every request.
            let fut = Box::into_pin(Box::write(
                Box::new_uninit(),
                crate::proxy::handle(s.clone(), req, memo.clone()),
            ));
            async move {
                let res = fut.await;
                Ok::<_, Infallible>(res.map(|body| Served {
                    body,
                    _answering: answering,
                }))
            }
        });
        let io = Sending::new(stream, conn.clone());
        let serving = Ordered::new(builder.serve_connection(TokioIo::new(io), svc), conn.clone());
        tasks.spawn(async move {
            let _listed = listed;
            match serving.await {
                Some(Ok(())) => {}
                Some(Err(e)) => debug!(%peer, error = %e, "connection ended with an error"),
                None if conn.order.load(Acquire) == CLOSE_SEND => debug!(
                    %peer,
                    timeout_ms = limits.send.as_millis() as u64,
                    "closed a connection that left its answer unread too long"
                ),
                None => debug!(
                    %peer,
                    timeout_ms = header_timeout.as_millis() as u64,
                    "closed a connection that sent no request head in time"
                ),
            }
        });
    }
    drop(listener);
    info!(
        drain_timeout_ms = drain.as_millis() as u64,
        "draining connections"
    );
    conns.order_all(DRAIN);
    tasks.close();
    tokio::select! {
        _ = tasks.wait() => info!("all connections drained"),
        _ = tokio::time::sleep(drain) => {
            warn!("drain timeout reached; closing remaining connections");
            conns.order_all(CLOSE);
        }
    }
    drop(looking);
}

// Orders to a connection (0: none); they only rise.
/// Finish the request in hand, then close (hyper's graceful shutdown): the server drains.
const DRAIN: u8 = 1;
/// Close now: it waited too long for a request head.
const CLOSE: u8 = 2;
/// Close now: a response write has been pending too long (the client stopped reading).
const CLOSE_SEND: u8 = 3;

/// One client connection as the server's bookkeeping sees it: how many requests have
/// started (their head arrived), how many are still being answered, and its orders.
#[derive(Debug, Default)]
struct Conn {
    started: AtomicU64,
    answering: AtomicU32,
    /// Written by `Sending` only when a write stalls or resumes: the stall's number (a
    /// count the connection keeps) shifted left once, with bit 0 set while it lasts.
    send: AtomicU64,
    order: AtomicU8,
    /// The connection task's waker, to act on an order.
    waker: AtomicWaker,
}

impl Conn {
    fn order(&self, order: u8) {
        self.order.fetch_max(order, AcqRel);
        self.waker.wake();
    }
}

/// A connection's future under its `Conn`'s orders; `None` when closed by order.
///
/// This replaces hyper-util's `GracefulShutdown`, whose watcher polled a channel at every
/// wake-up of every connection (about 1% of a request's instructions): here a wake-up
/// costs one atomic load, and the waker is registered again only after an order.
struct Ordered<C> {
    serving: C,
    conn: Arc<Conn>,
    /// The order last acted on; `None` before the first poll.
    seen: Option<u8>,
}

impl<C> Ordered<C> {
    fn new(serving: C, conn: Arc<Conn>) -> Self {
        Self {
            serving,
            conn,
            seen: None,
        }
    }
}

impl<C: GracefulConnection + Unpin> Future for Ordered<C> {
    type Output = Option<Result<(), C::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.seen != Some(this.conn.order.load(Acquire)) {
            // First poll, or a new order (whose wake took the waker): register, then read
            // the order again so that one given meanwhile is not missed.
            this.conn.waker.register(cx.waker());
            let order = this.conn.order.load(Acquire);
            if order >= CLOSE {
                return Poll::Ready(None);
            }
            if order == DRAIN && this.seen != Some(DRAIN) {
                Pin::new(&mut this.serving).graceful_shutdown();
            }
            this.seen = Some(order);
        }
        Pin::new(&mut this.serving).poll(cx).map(Some)
    }
}

/// Held from a request head's arrival until hyper drops the response body (its last frame
/// was taken, or the connection ended): while one is held, the connection is not waiting
/// for a head.
#[derive(Debug)]
struct Answering(Arc<Conn>);

impl Answering {
    fn begin(c: &Arc<Conn>) -> Self {
        c.started.fetch_add(1, Relaxed);
        c.answering.fetch_add(1, Relaxed);
        Self(c.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Relaxed);
    }
}

/// The open connections of one server, for the drain and the two time limits.
///
/// The header limit: a connection that waits a whole `limits.header` for a request head
/// (idle on keep-alive, or a head sent too slowly: slow loris) is closed; one with a
/// request being answered (a long stream, a slow upload) never is, as with hyper's
/// header-read timeout, which this replaces. The send limit: a connection whose response
/// write stays pending (its client stopped reading; the socket's send buffer is full) a
/// whole `limits.send` is closed, which drops the response body: the request is booked as
/// `client_aborted` and the upstream released.
///
/// One task looks at every connection each period, half the smaller limit. A connection is
/// closed at the look that finds it waiting (or stalled) for the whole periods that make
/// up its limit: with both limits equal, from the limit to 1.5 × the limit after the wait
/// began. Nothing runs per request but two counters, and a write only stores to `Conn`
/// when it stalls or resumes.
struct Conns {
    period: Duration,
    /// Whole quiet periods (`Watched::quiet`) that close a connection.
    header_periods: u32,
    /// Whole stalled periods (`Watched::stalled`) that close a connection.
    send_periods: u32,
    open: DashMap<u64, Watched>,
    next_id: AtomicU64,
}

struct Watched {
    conn: Arc<Conn>,
    /// (heads started, waiting for a head) at the last look; `None` before the first.
    last: Option<(u64, bool)>,
    /// Whole periods spent waiting, up to the last look.
    quiet: u32,
    /// `Conn::send` at the last look.
    last_send: u64,
    /// Whole periods the same write stall lasted, up to the last look.
    stalled: u32,
}

/// Takes its connection off the list when the connection's task ends.
struct Listed {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.conns.open.remove(&self.id);
    }
}

impl Conns {
    fn new(limits: Limits) -> Arc<Self> {
        // Bounded so that no deadline overflows: a limit of years is as good as none.
        const YEAR: Duration = Duration::from_secs(365 * 86_400);
        let period = (limits.header.min(limits.send) / 2).clamp(Duration::from_millis(1), YEAR);
        let periods = |limit: Duration| {
            let n = limit.min(YEAR * 2).as_nanos().div_ceil(period.as_nanos());
            u32::try_from(n).unwrap_or(u32::MAX).max(1)
        };
        Arc::new(Self {
            period,
            header_periods: periods(limits.header),
            send_periods: periods(limits.send),
            open: DashMap::new(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Lists a new connection; keep the guard in its task.
    fn add(self: &Arc<Self>) -> (Arc<Conn>, Listed) {
        let conn = Arc::new(Conn::default());
        let id = self.next_id.fetch_add(1, Relaxed);
        let watched = Watched {
            conn: conn.clone(),
            last: None,
            quiet: 0,
            last_send: 0,
            stalled: 0,
        };
        self.open.insert(id, watched);
        (
            conn,
            Listed {
                conns: self.clone(),
                id,
            },
        )
    }

    fn order_all(&self, order: u8) {
        for w in self.open.iter() {
            w.conn.order(order);
        }
    }

    /// One look at every connection: closes (and forgets) those found waiting for a head,
    /// or stalled in one write, for the whole periods of their limit.
    fn look(&self) {
        self.open.retain(|_, w| {
            let now = (w.conn.started.load(Relaxed), w.conn.answering.load(Relaxed) == 0);
            // Waiting at both looks, with no head in between: waiting the whole period.
            w.quiet = if now.1 && w.last == Some(now) {
                w.quiet.saturating_add(1)
            } else {
                0
            };
            w.last = Some(now);
            // The same stall at both looks: stalled the whole period.
            let send = w.conn.send.load(Relaxed);
            w.stalled = if send & 1 == 1 && send == w.last_send {
                w.stalled.saturating_add(1)
            } else {
                0
            };
            w.last_send = send;
            let order = if w.quiet >= self.header_periods {
                CLOSE
            } else if w.stalled >= self.send_periods {
                CLOSE_SEND
            } else {
                return true;
            };
            w.conn.order(order);
            false
        });
    }

    async fn look_every_period(self: Arc<Self>) {
        let period = self.period;
        let mut looks = tokio::time::interval_at(Instant::now() + period, period);
        looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            looks.tick().await;
            self.look();
        }
    }
}

/// The client's socket, telling its `Conn` when a write stalls (returns `Pending`: the
/// send buffer is full) and when writing resumes, for the send limit. A write that goes
/// through while none is stalled, the usual case, costs a branch.
struct Sending {
    io: TcpStream,
    conn: Arc<Conn>,
    /// Stalls so far; bit 0 of `Conn::send` says whether the last one lasts.
    stalls: u64,
    stalled: bool,
}

impl Sending {
    fn new(io: TcpStream, conn: Arc<Conn>) -> Self {
        Self {
            io,
            conn,
            stalls: 0,
            stalled: false,
        }
    }

    fn note<T>(&mut self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match (&r, self.stalled) {
            (Poll::Pending, false) => {
                self.stalled = true;
                self.stalls += 1;
                self.conn.send.store(self.stalls << 1 | 1, Relaxed);
            }
            (Poll::Ready(_), true) => {
                self.stalled = false;
                self.conn.send.store(self.stalls << 1, Relaxed);
            }
            _ => {}
        }
        r
    }
}

impl AsyncRead for Sending {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sending {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
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
    const LIMITS: Limits = Limits {
        header: LIMIT,
        send: LIMIT,
    };

    /// Completes once the connection is ordered to close (woken by the order, as a
    /// connection's task is).
    struct Closed<'a>(&'a Conn);

    impl Future for Closed<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.waker.register(cx.waker());
            if self.0.order.load(Acquire) >= CLOSE {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    fn closed(c: &Conn) -> bool {
        c.order.load(Acquire) >= CLOSE
    }

    #[test]
    fn a_connection_is_closed_at_the_second_whole_period_it_waits() {
        let conns = Conns::new(LIMITS);
        let (c, _listed) = conns.add();
        conns.look(); // accepted some time before this look
        conns.look();
        assert!(!closed(&c));
        conns.look();
        assert!(closed(&c));
        assert!(conns.open.is_empty(), "a closed connection is forgotten");
    }

    #[test]
    fn a_long_answer_is_never_cut_and_the_wait_after_it_is() {
        let conns = Conns::new(LIMITS);
        let (c, _listed) = conns.add();
        let answering = Answering::begin(&c);
        for _ in 0..100 {
            conns.look();
        }
        assert!(!closed(&c));
        drop(answering);
        conns.look(); // the wait began during the period before this look
        conns.look();
        assert!(!closed(&c));
        conns.look();
        assert!(closed(&c));
    }

    #[test]
    fn a_head_in_every_other_period_keeps_the_connection() {
        let conns = Conns::new(LIMITS);
        let (c, _listed) = conns.add();
        for _ in 0..100 {
            conns.look();
            conns.look();
            drop(Answering::begin(&c)); // answered at once, before the next look
        }
        assert!(!closed(&c));
    }

    #[test]
    fn a_write_stalled_for_the_send_limit_closes_the_connection_and_progress_resets_it() {
        let conns = Conns::new(Limits {
            header: LIMIT,
            send: LIMIT / 2,
        });
        assert_eq!((conns.header_periods, conns.send_periods), (4, 2));
        let (c, _listed) = conns.add();
        let _answering = Answering::begin(&c);
        // Stalled, then resumed and stalled again before every other look: never a whole
        // period in one stall.
        for stall in 1..50u64 {
            c.send.store(stall << 1 | 1, Relaxed);
            conns.look();
            conns.look();
        }
        assert!(!closed(&c));
        c.send.store(50 << 1 | 1, Relaxed);
        conns.look(); // the stall began during the period before this look
        conns.look();
        assert_eq!(c.order.load(Acquire), 0);
        conns.look();
        assert_eq!(c.order.load(Acquire), CLOSE_SEND);
        assert!(closed(&c));
    }

    #[test]
    fn an_ended_connection_is_forgotten_and_orders_only_rise() {
        let conns = Conns::new(LIMITS);
        let (c, listed) = conns.add();
        conns.order_all(CLOSE);
        conns.order_all(DRAIN);
        assert!(closed(&c));
        assert_eq!(conns.open.len(), 1);
        drop(listed);
        assert!(conns.open.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_closes_a_waiting_connection_between_the_limit_and_one_and_a_half_times_it() {
        let conns = Conns::new(LIMITS);
        let _looking = AbortOnDropHandle::new(tokio::spawn(conns.clone().look_every_period()));
        for offset in [
            Duration::ZERO,
            Duration::from_secs(1),
            LIMIT / 2 - Duration::from_secs(1),
        ] {
            tokio::time::sleep(offset).await;
            let (c, _listed) = conns.add();
            let t = Instant::now();
            Closed(&c).await;
            let waited = t.elapsed();
            assert!(
                waited >= LIMIT && waited <= LIMIT * 3 / 2,
                "closed after {waited:?}"
            );
        }
    }
}
