//! A tower layer that gives each gRPC call under a path prefix a SERVER span
//! (`rpc.system=grpc`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), continuing
//! the caller's `traceparent`. Without a tracer it passes calls through untouched.
//!
//! The status is the `grpc-status` header of a trailers-only answer (how tonic answers a
//! handler's `Err(Status)`), else 0: a unary handler that answered with a message
//! succeeded. The span ends when the response head is ready, not when its body is sent.
//! A call refused as UNAUTHENTICATED gets no span.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Instant, SystemTime},
};

use futures::future::Either;
use opentelemetry::{
    trace::{SpanKind, Status},
    KeyValue,
};

use crate::{Span, Tracer};

/// Traces the calls whose path starts with `prefix` (e.g. `/switchyard.v1.Admin/`).
#[derive(Debug, Clone)]
pub struct TraceLayer {
    tracer: Option<Arc<Tracer>>,
    prefix: &'static str,
}

impl TraceLayer {
    pub fn new(tracer: Option<Arc<Tracer>>, prefix: &'static str) -> Self {
        Self { tracer, prefix }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> TraceService<S> {
        TraceService {
            inner,
            tracer: self.tracer.clone(),
            prefix: self.prefix,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
    tracer: Option<Arc<Tracer>>,
    prefix: &'static str,
}

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for TraceService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Either<S::Future, Boxed<http::Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(tracer) = self.tracer.clone() else {
            return Either::Left(self.inner.call(req));
        };
        let path = req.uri().path();
        if !path.starts_with(self.prefix) {
            return Either::Left(self.inner.call(req));
        }
        let Some(cx) = tracer.start_server(req.headers()) else {
            return Either::Left(self.inner.call(req));
        };
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .map(|(s, m)| (s.to_string(), m.to_string()))
            .unwrap_or_default();
        let start = SystemTime::now();
        let t0 = Instant::now();
        let fut = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let res = fut.await;
            let code: i64 = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                // The service failed outright (tonic maps that to UNKNOWN).
                Err(_) => 2,
            };
            // A caller that did not authenticate (UNAUTHENTICATED) gets no span: it would
            // choose the trace it joins and whether it is sampled, and fill the export
            // queue that authenticated calls share. The status is counted and logged
            // where authentication is checked.
            if code == 16 {
                return res;
            }
            // A method the service does not have (UNIMPLEMENTED): the caller's path is
            // not a name to put in a span (any caller, authenticated or not, chooses it),
            // so it is `_OTHER`, as the RPC conventions say for an unknown method.
            let method = if code == 12 { "_OTHER".to_string() } else { method };
            // Server-side errors per the RPC conventions: UNKNOWN, DEADLINE_EXCEEDED,
            // UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
            let status = if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
                Status::error(format!("grpc status {code}"))
            } else {
                Status::Unset
            };
            tracer.submit(Span {
                trace_id: cx.trace_id,
                span_id: cx.span_id,
                parent_span_id: cx.parent.unwrap_or(0),
                parent_is_remote: cx.parent.is_some(),
                kind: SpanKind::Server,
                name: format!("{service}/{method}").into(),
                start,
                end: start + t0.elapsed(),
                attributes: vec![
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", code),
                ],
                status,
                trace_state: cx.trace_state,
            });
            res
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::{convert::Infallible, future::Ready};

    use tower::{Layer as _, Service as _};

    use super::*;
    use crate::Sampler;

    /// Answers every call with a trailers-only `grpc-status` of its own.
    #[derive(Clone)]
    struct Answers(&'static str);

    impl tower::Service<http::Request<()>> for Answers {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Ready<Result<http::Response<()>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let r = http::Response::builder()
                .header("grpc-status", self.0)
                .body(())
                .unwrap();
            std::future::ready(Ok(r))
        }
    }

    fn attr(s: &crate::SpanData, k: &str) -> Option<opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.clone())
    }

    /// A known method's span is named by it; a path the service does not serve
    /// (UNIMPLEMENTED), whatever the caller put there, is `_OTHER`.
    #[tokio::test]
    async fn span_names_the_method_or_other() {
        let (tracer, mut rx) = Tracer::detached(Sampler::new(false, 1.0), 4);
        for (status, path, name) in [
            (
                "5",
                "/switchyard.v1.Admin/GetModel",
                "switchyard.v1.Admin/GetModel",
            ),
            (
                "12",
                "/switchyard.v1.Admin/x-caller-chosen-0123456789",
                "switchyard.v1.Admin/_OTHER",
            ),
        ] {
            let mut svc =
                TraceLayer::new(Some(tracer.clone()), "/switchyard.v1.Admin/").layer(Answers(status));
            let req = http::Request::builder().uri(path).body(()).unwrap();
            svc.call(req).await.unwrap();
            let span = rx.try_recv().unwrap();
            assert_eq!(span.name, name);
            assert_eq!(
                attr(&span, "rpc.method").unwrap().as_str(),
                name.rsplit('/').next().unwrap()
            );
        }
    }

    /// A caller refused as unauthenticated makes no span, even with a sampled
    /// `traceparent` of its own; an authenticated one continues its trace.
    #[tokio::test]
    async fn unauthenticated_calls_make_no_span() {
        let (tracer, mut rx) = Tracer::detached(Sampler::new(true, 0.0), 4);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for (status, spans) in [("16", 0), ("0", 1)] {
            let mut svc =
                TraceLayer::new(Some(tracer.clone()), "/switchyard.v1.Admin/").layer(Answers(status));
            let req = http::Request::builder()
                .uri("/switchyard.v1.Admin/ListModels")
                .header("traceparent", parent)
                .body(())
                .unwrap();
            svc.call(req).await.unwrap();
            let mut got = 0;
            while let Ok(span) = rx.try_recv() {
                assert_eq!(
                    span.span_context.trace_id().to_string(),
                    "4bf92f3577b34da6a3ce929d0e0e4736"
                );
                got += 1;
            }
            assert_eq!(got, spans, "grpc-status {status}");
        }
    }
}
