//! Plain HTTP endpoints beside gRPC: `/healthz` and Prometheus `/metrics`.
use std::sync::Arc;

use axum::{http::header, response::IntoResponse, routing::get, Router};

use crate::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
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
}
