//! Fixtures for testing the phases without sockets: a worker's shared state and a
//! routing table built from a snapshot, and answers made up in memory.
#![allow(clippy::unwrap_used)]
use std::sync::{atomic::AtomicBool, Arc};

use bytes::Bytes;
use switchyard_proto as pb;

use crate::{
    balance::{self, BreakerConfig},
    config::{Routing, States},
    upstream, Shared,
};

use super::attempt::Answer;

/// An answer with `status` and `body`, as if read from an upstream.
pub fn answer(status: u16, body: &'static [u8]) -> Answer {
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    let (head, ()) = r.into_parts();
    Answer {
        head,
        body: upstream::Body::detached(Bytes::from_static(body)),
        first: None,
        sse: false,
        ttfb: std::time::Duration::from_millis(1),
    }
}

/// A worker's shared state, with no server, no control plane and no sinks.
pub fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        routing: arc_swap::ArcSwapOption::empty(),
        clock: crate::Clock { _private: () },
        budget: balance::RetryBudget::default(),
        metrics: crate::metrics::Metrics::new(),
        usage_sink: None,
        health_sink: None,
        access_log: None,
        tracer: None,
        max_body_bytes: 1 << 20,
        body_limits: crate::body::BodyLimits::default(),
        retry_after_cap: std::time::Duration::from_secs(600),
        limit_wait: std::time::Duration::from_millis(250),
        abort_drain: crate::relay::AbortDrain::default(),
        drains: tokio_util::task::TaskTracker::new(),
        drain_stop: tokio_util::sync::CancellationToken::new(),
        worker_id: "test".into(),
        tasks: tokio_util::task::TaskTracker::new(),
        activity: Arc::new(tokio::sync::Notify::new()),
        lease_wake: tokio::sync::Notify::new(),
        lease_granted: tokio::sync::Notify::new(),
        connector: upstream::Connector::new().unwrap(),
        breaker: BreakerConfig::default(),
        draining: AtomicBool::new(false),
        probes: parking_lot::Mutex::new(None),
        shutdown: tokio_util::sync::CancellationToken::new(),
    })
}

/// One OpenAI-kind provider `p` with credentials `k1` and `k2`, and model `m` with
/// backends `a` (upstream model `up-a`) and `b` (`up-b`); client key `sk-test`.
pub fn snapshot() -> pb::Snapshot {
    pb::Snapshot {
        version: 1,
        providers: vec![pb::Provider {
            name: "p".into(),
            kind: "openai".into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            credentials: ["k1", "k2"]
                .iter()
                .map(|n| pb::Credential {
                    name: (*n).into(),
                    secret: format!("sk-{n}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        models: vec![pb::Model {
            name: "m".into(),
            backends: ["a", "b"]
                .iter()
                .map(|n| pb::Backend {
                    name: (*n).into(),
                    provider: "p".into(),
                    upstream_model: format!("up-{n}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        keys: vec![pb::ApiKey {
            id: "key1".into(),
            name: "test".into(),
            key_hash: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sk-test")),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn routing(shared: &Shared, snap: &pb::Snapshot) -> Arc<Routing> {
    Arc::new(
        crate::convert::build(
            snap,
            &States::default(),
            &shared.connector,
            BreakerConfig::default(),
        )
        .unwrap(),
    )
}

/// The request filter's reading of a POST to `path` with `body` and `headers`, as key
/// `sk-test` of [`snapshot`].
pub fn inbound<'a>(
    routing: &'a Routing,
    path: &str,
    body: &'static str,
    headers: &[(&'static str, &'static str)],
) -> super::filter::Inbound<'a> {
    let mut b = http::Request::builder().method("POST").uri(path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(b"sk-test").into();
    let kind = if path.starts_with("/v1/messages") {
        crate::config::ProviderKind::Anthropic
    } else {
        crate::config::ProviderKind::OpenAi
    };
    super::filter::Inbound {
        default_path: crate::paths::is_default(kind, path),
        nominated: crate::paths::connection_nominated(&parts.headers),
        head: crate::extract::scan(body.as_bytes()).unwrap(),
        body: Bytes::from_static(body.as_bytes()),
        parts,
        kind,
        key: &routing.keys[&digest],
    }
}

/// The context the phases after the request filter share, for `req` as an OpenAI client
/// sends it, with its plan made (`route::plan`) and no attempt yet.
pub fn ctx<'a>(
    shared: &'a Arc<Shared>,
    routing: &'a Arc<Routing>,
    fin: &'a mut crate::relay::Finish,
    req: super::filter::Inbound<'a>,
) -> super::Ctx<'a> {
    let plan = super::route::plan(shared, routing, &req, fin).unwrap();
    super::Ctx {
        shared,
        routing,
        fin,
        dialect: crate::errors::Dialect::OpenAi,
        req,
        plan,
        tries: super::classify::Tries::default(),
    }
}
