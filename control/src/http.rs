//! Plain HTTP endpoints beside gRPC: `/healthz`, Prometheus `/metrics`, and the web
//! console under `/console/` ([`crate::console`]).
use std::sync::Arc;

use axum::{http::header, response::IntoResponse, routing::get, Router};

use crate::{console::Console, metrics::Metrics};

pub fn router(metrics: Arc<Metrics>, console: Arc<Console>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        )
        .merge(crate::console::router(console))
}
