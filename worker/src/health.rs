//! Active health: one probe task per provider with checks enabled, on every worker, at
//! the provider's interval with jitter. Each enabled credential is probed (marking the
//! credential); the provider's backends are then marked healthy when at least one
//! credential passed. Also renders `GET /health`.
use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    body::ProxyBody,
    config::{ProbeKind, Provider, ProviderKind, Routing},
    Shared,
};

/// Start the probe tasks for `routing`; they stop when `cancel` fires.
pub fn spawn_probes(shared: &Arc<Shared>, routing: &Arc<Routing>, cancel: CancellationToken) {
    for (pi, p) in routing.providers.iter().enumerate() {
        if p.health.is_none() || !p.enabled || p.credentials.is_empty() {
            continue;
        }
        let shared2 = shared.clone();
        let routing = routing.clone();
        let cancel = cancel.clone();
        shared.tasks.spawn(async move {
            probe_loop(shared2, routing, pi, cancel).await;
        });
    }
}

fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let j = ms / 10;
    Duration::from_millis(ms - j + rand::rng().random_range(0..=2 * j))
}

async fn probe_loop(shared: Arc<Shared>, routing: Arc<Routing>, pi: usize, cancel: CancellationToken) {
    let p = &routing.providers[pi];
    let Some(h) = &p.health else { return };
    // First probe soon (spread over a short window), then every interval ± 10%.
    let mut delay =
        Duration::from_millis(rand::rng().random_range(0..=(h.interval.as_millis() as u64 / 10).min(1000)));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        probe_once(&shared, &routing, pi).await;
        delay = jittered(h.interval);
    }
}

/// Probe every credential of provider `pi` once and update credential and backend states.
pub async fn probe_once(shared: &Shared, routing: &Routing, pi: usize) {
    let p = &routing.providers[pi];
    let Some(h) = &p.health else { return };
    let mut any_ok = false;
    let mut last_reason = String::new();
    for c in &p.credentials {
        let result = tokio::time::timeout(h.timeout, send_probe(p, &c.auth_value, &h.probe)).await;
        let (ok, reason) = match result {
            Err(_) => (false, "probe failed: timeout".to_string()),
            Ok(Err(e)) => (false, format!("probe failed: {e}")),
            Ok(Ok(status)) if status < h.healthy_below => (true, "probe ok".to_string()),
            Ok(Ok(status)) => (false, format!("probe failed: {status}")),
        };
        let now = shared.clock.now_ms();
        shared.transition(c.state.set_probe_result(now, ok, &reason), || {
            crate::account::HealthTarget::credential(&p.name, &c.name)
        });
        debug!(provider = %p.name, credential = %c.name, ok, reason = %reason, "probe");
        any_ok |= ok;
        if !ok {
            last_reason = reason;
        }
    }
    p.last_check_ms.store(crate::unix_ms() as u64, Ordering::Relaxed);
    let now = shared.clock.now_ms();
    let reason = if any_ok { "probe ok" } else { last_reason.as_str() };
    for m in routing.models.values() {
        for r in m.routes.iter().flatten() {
            for b in r.native_backends().iter().filter(|b| b.provider == pi) {
                shared.transition(b.state.set_probe_result(now, any_ok, reason), || {
                    crate::account::HealthTarget::backend(&m.name, &b.name, &p.name)
                });
            }
        }
    }
}

/// Least time between two confirmation probes of one credential.
const CONFIRM_GAP_MS: u64 = 5_000;
/// Probe timeout when the provider has no health check configured.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream answered 401/403 to a request made with credential `ci` of provider `pi`.
/// That alone takes nothing out: the client's request (its headers, its body, the model
/// it named) may have provoked it. A probe that carries nothing of the client's (`GET`
/// the models list with the credential) confirms it; only then is the credential
/// ejected. At most one probe per credential runs at a time, and at most one per
/// `CONFIRM_GAP_MS`.
pub fn confirm_credential(shared: &Arc<Shared>, routing: &Arc<Routing>, pi: usize, ci: usize, status: u16) {
    let c = &routing.providers[pi].credentials[ci];
    if !c.state.try_start_confirm(shared.clock.now_ms(), CONFIRM_GAP_MS) {
        return;
    }
    let (shared, routing) = (shared.clone(), routing.clone());
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let p = &routing.providers[pi];
        let c = &p.credentials[ci];
        match models_probe(p, c).await {
            Ok(s @ (401 | 403)) => {
                let reason = format!("upstream {status}, confirmed by a probe ({s})");
                let now = shared.clock.now_ms();
                shared.transition(c.state.eject(now, &reason), || {
                    crate::account::HealthTarget::credential(&p.name, &c.name)
                });
            }
            other => {
                let seen = match other {
                    Ok(s) => s.to_string(),
                    Err(e) => e,
                };
                tracing::info!(provider = %p.name, credential = %c.name, status, probe = %seen,
                    "upstream rejected a request's credential; the probe did not confirm it: kept");
            }
        }
    });
}

/// A request to a backend timed out before its answer, and the backend answered nothing
/// else within that timeout. A long generation and a dead upstream look alike from one
/// request, so the breaker is not told until a probe (the provider's models list, with the
/// credential the request used, with the probe timeout rather than the request's) also
/// fails. One probe at a time per backend, at most one per `CONFIRM_GAP_MS`.
pub fn confirm_timeout(
    shared: &Arc<Shared>,
    routing: &Arc<Routing>,
    state: &Arc<crate::balance::EndpointState>,
    target: impl FnOnce() -> crate::account::HealthTarget,
    pi: usize,
    ci: usize,
) {
    if !state.try_start_confirm(shared.clock.now_ms(), CONFIRM_GAP_MS) {
        return;
    }
    let (shared, routing, state, target) = (shared.clone(), routing.clone(), state.clone(), target());
    let tasks = shared.tasks.clone();
    tasks.spawn(async move {
        let p = &routing.providers[pi];
        let c = &p.credentials[ci];
        let failed = match models_probe(p, c).await {
            Err(e) => Some(format!("timeout, and the probe failed: {e}")),
            Ok(s) if s >= 500 => Some(format!("timeout, and the probe answered {s}")),
            Ok(_) => None,
        };
        match failed {
            Some(reason) => {
                let now = shared.clock.now_ms();
                shared.transition(state.record_failure(now, &reason), || target);
            }
            None => tracing::info!(backend = %target.backend, provider = %p.name,
                "a request timed out, but the upstream answers a probe: slow, not dead"),
        }
    });
}

/// The models list asked with credential `c` alone (nothing of any client's request),
/// within the provider's probe timeout (or `CONFIRM_TIMEOUT` without a health check).
async fn models_probe(p: &Provider, c: &crate::config::Credential) -> Result<u16, String> {
    let timeout = p.health.as_ref().map_or(CONFIRM_TIMEOUT, |h| h.timeout);
    tokio::time::timeout(timeout, send_probe(p, &c.auth_value, &ProbeKind::Models))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

async fn send_probe(p: &Provider, auth: &HeaderValue, probe: &ProbeKind) -> Result<u16, String> {
    let (method, path, body) = match probe {
        // An OpenAI-kind base URL ends in `/v1`; an Anthropic one does not.
        ProbeKind::Models => (
            Method::GET,
            if p.kind == ProviderKind::Anthropic { "/v1/models" } else { "/models" }.to_string(),
            Bytes::new(),
        ),
        ProbeKind::Chat(m) => (
            Method::POST,
            "/chat/completions".to_string(),
            Bytes::from(
                serde_json::json!({"model": m, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]})
                    .to_string(),
            ),
        ),
        ProbeKind::Messages(m) => (
            Method::POST,
            if p.kind == ProviderKind::Anthropic { "/v1/messages" } else { "/messages" }.to_string(),
            Bytes::from(
                serde_json::json!({"model": m, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]})
                    .to_string(),
            ),
        ),
    };
    let mut head = p.client.head(&method, &path, 256);
    for (n, v) in &p.static_headers {
        head.header(n, v);
    }
    head.header(&p.auth_header, auth);
    if !body.is_empty() && !p.sets_header(&header::CONTENT_TYPE) {
        head.header(
            &header::CONTENT_TYPE,
            &HeaderValue::from_static("application/json"),
        );
    }
    static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
    if p.kind == ProviderKind::Anthropic && !p.sets_header(&ANTHROPIC_VERSION) {
        head.header(&ANTHROPIC_VERSION, &HeaderValue::from_static("2023-06-01"));
    }
    let resp = p
        .client
        .send(head, std::slice::from_ref(&body))
        .await
        .map_err(|e| {
            if e.is_connect() {
                "connect error".to_string()
            } else {
                e.to_string()
            }
        })?;
    let status = resp.status().as_u16();
    // Drain so the connection returns to the pool.
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// How much `GET /health` tells: the client port answers counts only (anyone who can
/// send a request can read it), the ops port the names, states and last errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Status, version, and healthy/total counts of backends and credentials.
    Counts,
    /// Also every model, backend, provider and credential by name, with its state.
    Full,
}

/// `GET /health`: overall status, config version, counts, and (`Detail::Full`)
/// per-model/backend detail.
pub fn health_response(shared: &Shared, detail: Detail) -> Response<ProxyBody> {
    let now = shared.clock.now_ms();
    // Breaker and cool-down deadlines live on the monotonic clock (`shared.clock`); the
    // JSON gives every time as wall-clock Unix milliseconds, like `last_check_ms`.
    let wall_now = crate::unix_ms().max(0) as u64;
    let wall = |until: Option<u64>| until.map(|t| wall_now + t.saturating_sub(now));
    let routing = shared.routing.load_full();
    let body = match routing.as_deref() {
        None => {
            serde_json::json!({"status": "unavailable", "version": null, "reason": "no configuration yet"})
        }
        Some(r) => {
            let (mut b_ok, mut b_total, mut c_ok, mut c_total) = (0u32, 0u32, 0u32, 0u32);
            let mut any_model_down = false;
            let mut models = serde_json::Map::new();
            let mut names: Vec<&String> = r.models.keys().collect();
            names.sort();
            for name in names {
                let m = &r.models[name];
                let mut backends = Vec::new();
                let mut model_ok = false;
                for route in m.routes.iter().flatten() {
                    for b in route.native_backends() {
                        let p = &r.providers[b.provider];
                        let v = b.state.snapshot(now);
                        let creds_ok = p.credentials.iter().any(|c| c.state.is_available(now));
                        let healthy = v.healthy && creds_ok;
                        b_total += 1;
                        if healthy {
                            b_ok += 1;
                            model_ok = true;
                        }
                        let last = p.last_check_ms.load(Ordering::Relaxed);
                        backends.push(serde_json::json!({
                            "name": b.name,
                            "provider": p.name,
                            "upstream_model": b.upstream_model,
                            "healthy": healthy,
                            "inflight": v.inflight,
                            "ewma_ttfb_ms": v.ewma_ttfb_ms,
                            "consecutive_failures": v.consecutive_failures,
                            "ejected_until_ms": wall(v.ejected_until_ms),
                            "last_check_ms": (last > 0).then_some(last),
                            "last_error": v.last_error,
                        }));
                    }
                }
                if !model_ok && m.enabled {
                    any_model_down = true;
                }
                models.insert(
                    name.clone(),
                    serde_json::json!({"healthy": model_ok, "backends": backends}),
                );
            }
            let mut providers = Vec::new();
            for p in &r.providers {
                let creds: Vec<_> = p
                    .credentials
                    .iter()
                    .map(|c| {
                        let v = c.state.snapshot(now);
                        c_total += 1;
                        let ok = c.state.is_available(now);
                        if ok {
                            c_ok += 1;
                        }
                        serde_json::json!({
                            "name": c.name,
                            "healthy": v.healthy,
                            "available": ok,
                            "inflight": v.inflight,
                            "cooldown_until_ms": wall(v.cooldown_until_ms),
                            "last_error": v.last_error,
                        })
                    })
                    .collect();
                providers
                    .push(serde_json::json!({"name": p.name, "kind": p.kind.as_str(), "credentials": creds}));
            }
            let status = if b_total > 0 && b_ok == 0 {
                "unavailable"
            } else if any_model_down || b_ok < b_total || c_ok < c_total {
                "degraded"
            } else {
                "ok"
            };
            let mut body = serde_json::json!({
                "status": status,
                "version": r.version,
                "draining": shared.draining(),
                "backends": {"healthy": b_ok, "total": b_total},
                "credentials": {"healthy": c_ok, "total": c_total},
            });
            if detail == Detail::Full {
                body["hash"] = r.hash.clone().into();
                body["models"] = models.into();
                body["providers"] = providers.into();
            }
            body
        }
    };
    let unavailable = body["status"] == "unavailable";
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if unavailable {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}
