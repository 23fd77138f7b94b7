//! The HTTP/1.1 server: accept loop with TCP_NODELAY and keep-alive on hyper directly
//! (no framework on the hot path), and the graceful drain on shutdown.
use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Shared;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken, drain: Duration) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).timer(TokioTimer::new());
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
        let svc = service_fn(move |req| {
            // Boxed: the connection task is sized for its largest state, and the request
            // future is large. Unboxed, every open connection (every open stream) kept
            // that space for its whole life; boxed, it is freed once the answer starts.
            let fut = Box::pin(crate::proxy::handle(s.clone(), req, memo.clone()));
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                debug!(%peer, error = %e, "connection ended with an error");
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
