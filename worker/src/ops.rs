//! The ops listener (`--ops-listen`, loopback by default): the detailed `GET /health`
//! (every model, backend, provider and credential by name, with states and last errors),
//! `GET /metrics` and `GET /ready`, for operators and scrapers, apart from client traffic.
//! The client port answers `/ready` and a `/health` of counts only.
//!
//! A small hyper server of its own, so the client accept loop (`server`) and the request
//! path pay nothing for it: a few requests a second at most, no keep-alive limits to
//! enforce beyond hyper's header-read timeout, stopped with the worker's background tasks.
use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use crate::{body::ProxyBody, health::Detail, Shared};

/// Serve the ops endpoints on `listener` until `stop`; open connections are closed then.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Some(Duration::from_secs(30)));
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "ops accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let s = shared.clone();
        let svc = service_fn(move |req| {
            let r = answer(&s, &req);
            async move { Ok::<_, Infallible>(r) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let stop = stop.clone();
        conns.spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(%peer, error = %e, "ops connection ended with an error");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
    conns.close();
    conns.wait().await;
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => crate::health::health_response(shared, Detail::Full),
        (&Method::GET, "/ready") => crate::proxy::ready_response(shared),
        (&Method::GET, "/metrics") => {
            let routing = shared.routing.load_full();
            let text = shared.metrics.render(routing.as_deref(), shared.clock.now_ms());
            let mut r = Response::new(ProxyBody::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => {
            let mut r = Response::new(ProxyBody::full("not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}
