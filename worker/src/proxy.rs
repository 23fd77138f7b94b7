//! The request path, top to bottom: dispatch by path → authenticate (`auth`) → read and
//! scan the body (`extract`) → route (model → tier → strategy → backend → credential,
//! via `balance`) → forward with held-back headers and retries → relay the answer
//! (`relay`), which logs and accounts the request when it ends.
use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::warn;

use crate::{
    account::{HealthTarget, Outcome},
    auth,
    balance::{stable_hash, PickContext},
    body::ProxyBody,
    config::{Affinity, ProviderKind, Routing},
    errors::{Dialect, ProxyError},
    extract, paths,
    relay::{Finish, RelayBody},
    upstream, Shared,
};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_BACKEND: HeaderName = HeaderName::from_static("x-switchyard-backend");
static X_PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
static X_RETRIES: HeaderName = HeaderName::from_static("x-switchyard-retries");

/// Entry point for every HTTP request the worker serves.
/// `memo`: the connection's last presented key digest (see `auth::KeyMemo`).
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    memo: Arc<auth::KeyMemo>,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    let is_messages = path == "/v1/messages" || path.starts_with("/v1/messages/");
    match (req.method(), path) {
        (&Method::GET, "/health") => crate::health::health_response(&shared),
        (&Method::GET, "/ready") => ready_response(&shared),
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
        (&Method::GET, "/v1/models") => models_response(&shared, req.headers(), &memo),
        (&Method::POST, _) if is_messages => proxy(shared, req, ProviderKind::Anthropic, &memo).await,
        (&Method::POST, p) if p.starts_with("/v1/") => proxy(shared, req, ProviderKind::OpenAi, &memo).await,
        (_, p) => {
            let dialect = if is_messages {
                Dialect::Anthropic
            } else {
                Dialect::OpenAi
            };
            let e = if p.starts_with("/v1/") && req.method() != Method::POST {
                ProxyError::MethodNotAllowed
            } else {
                ProxyError::NotFound(p.to_string())
            };
            e.into_response(dialect)
        }
    }
}

fn ready_response(shared: &Shared) -> Response<ProxyBody> {
    let ready = !shared.draining() && shared.routing.load().is_some();
    let mut r = Response::new(ProxyBody::full(if ready { "ready\n" } else { "not ready\n" }));
    if !ready {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

fn models_response(shared: &Shared, headers: &HeaderMap, memo: &auth::KeyMemo) -> Response<ProxyBody> {
    let Some(routing) = shared.routing.load_full() else {
        return ProxyError::NoConfig.into_response(Dialect::OpenAi);
    };
    let key = match auth::authenticate(&routing, headers, crate::unix_ms(), memo) {
        Ok(k) => k,
        Err(e) => return e.into_response(Dialect::OpenAi),
    };
    let data: Vec<_> = routing
        .model_names
        .iter()
        .filter(|m| key.may_use(m))
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    let mut r = Response::new(ProxyBody::full(
        serde_json::json!({"object": "list", "data": data}).to_string(),
    ));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `x-switchyard-retries`: the usual small counts without an allocation each.
fn retries_header(n: u32) -> HeaderValue {
    static SMALL: [HeaderValue; 4] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
    ];
    SMALL
        .get(n as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(crate::fast_uuid_v7_string)
}

async fn proxy(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    kind: ProviderKind,
    memo: &auth::KeyMemo,
) -> Response<ProxyBody> {
    let dialect = match kind {
        ProviderKind::OpenAi => Dialect::OpenAi,
        ProviderKind::Anthropic => Dialect::Anthropic,
    };
    let request_id = request_id(req.headers());
    shared.budget.record_request(shared.clock.now_ms());
    // Counts the request in flight; books it as `client_aborted` if this future is dropped
    // (the client hung up) before an answer is built. An answer takes it over
    // (`Finish::hand_over` in `build_response`).
    let mut fin = Finish::new(shared.clone(), request_id.clone(), req.uri().path().to_string());
    let mut resp = match forward(&shared, req, kind, dialect, &mut fin, memo).await {
        Ok(r) => r,
        Err(e) => {
            let status = e.status().as_u16();
            fin.status = status;
            fin.error = Some(e.label());
            let outcome = match e {
                ProxyError::NoBackend(_) | ProxyError::NoConfig => Outcome::NoBackend,
                ProxyError::Connect
                | ProxyError::Timeout
                | ProxyError::Upstream(_)
                | ProxyError::CredentialRejected => Outcome::UpstreamError,
                _ => Outcome::Rejected,
            };
            let retries = fin.retries;
            // Upstream errors were counted per attempt in `forward`.
            fin.done(outcome, None);
            let mut r = e.into_response_for(dialect, Some(&request_id));
            if retries > 0 {
                r.headers_mut().insert(&X_RETRIES, retries_header(retries));
            }
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(&X_REQUEST_ID, v);
    }
    resp
}

/// Milliseconds from a `Retry-After` header (delta-seconds form only), at most `cap_ms`:
/// an upstream cannot cool a credential down for years, and `1e30` cannot overflow a
/// deadline.
fn retry_after_ms(h: &HeaderMap, cap_ms: u64) -> Option<u64> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| ((s * 1000.0) as u64).min(cap_ms))
}

/// The upstream path for a client path: OpenAI-kind base URLs already end in `/v1`.
fn upstream_path(kind: ProviderKind, uri: &Uri) -> &str {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    match kind {
        ProviderKind::OpenAi => pq.strip_prefix("/v1").unwrap_or(pq),
        ProviderKind::Anthropic => pq,
    }
}

/// A retryable upstream answer kept in case no other backend does better.
struct Kept {
    resp: Response<upstream::Body>,
    backend: usize,
    cred: usize,
}

async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    kind: ProviderKind,
    dialect: Dialect,
    fin: &mut Finish,
    memo: &auth::KeyMemo,
) -> Result<Response<ProxyBody>, ProxyError> {
    let routing: Arc<Routing> = shared.routing.load_full().ok_or(ProxyError::NoConfig)?;
    let key = auth::authenticate(&routing, req.headers(), crate::unix_ms(), memo)?;
    fin.key_id = key.id.clone();
    fin.key_name = key.name.clone();
    // Only inference paths, or ones an operator opened on a provider, go upstream with
    // the operator's credentials (`paths`); checked before the body is read.
    let path = req.uri().path();
    if !paths::well_formed(path) {
        return Err(ProxyError::NotFound(path.to_string()));
    }
    let default_path = paths::is_default(kind, path);
    if !default_path && !routing.providers.iter().any(|p| paths::provider_allows(p, path)) {
        return Err(ProxyError::NotFound(path.to_string()));
    }

    let (parts, body) = req.into_parts();
    let bytes = crate::body::read_body(body, shared.max_body_bytes, &shared.body_limits).await?;
    let head = extract::scan(&bytes).map_err(ProxyError::BadRequest)?;
    let model_name = head
        .model
        .as_deref()
        .ok_or_else(|| ProxyError::BadRequest("missing `model`".into()))?;
    fin.stream = head.stream;
    // A model the key may not use gets the very answer of a model that does not exist, so
    // that a restricted key cannot learn which hidden models there are.
    let model = routing
        .models
        .get(model_name)
        .filter(|m| m.enabled && key.may_use(model_name))
        .ok_or_else(|| ProxyError::UnknownModel(model_name.to_string()))?;
    let route = model.routes[kind.index()]
        .as_ref()
        .ok_or_else(|| ProxyError::no_backend_for_api(model_name, kind))?;
    let path = parts.uri.path();
    if !default_path
        && !route
            .backends
            .iter()
            .any(|b| paths::extra_allows(&routing.providers[b.provider].extra_paths, path))
    {
        return Err(ProxyError::NotFound(path.to_string()));
    }
    fin.model = model.name.clone();
    fin.model_metrics = Some(model.metrics.clone());
    let model_range = head.model_range.clone().unwrap_or(0..0);
    // Ask OpenAI streams for their usage so that they can be accounted; the extra chunk
    // is removed again in `relay` so the client sees the stream it asked for.
    let inject_usage = kind == ProviderKind::OpenAi
        && head.stream
        && head.include_usage != Some(true)
        && (path == "/v1/chat/completions" || path == "/v1/completions");
    let usage_edit = inject_usage.then(|| extract::include_usage_edit(&bytes, &head));

    let affinity = match &model.affinity {
        Affinity::None => None,
        Affinity::Header(h) => parts.headers.get(h).map(|v| stable_hash(v.as_bytes())),
        Affinity::User => head.user.as_deref().map(|u| stable_hash(u.as_bytes())),
    };
    // Pinning skips tiers and strategies: a permission of the key.
    let mut pin = parts
        .headers
        .get(&X_BACKEND)
        .filter(|_| key.may_pin)
        .and_then(|v| v.to_str().ok())
        .and_then(|name| route.backends.iter().position(|b| &*b.name == name))
        .filter(|&i| route.backends[i].state.is_available(shared.clock.now_ms()));

    let mut excluded_b: Vec<usize> = Vec::new();
    let mut excluded_c: Vec<(usize, usize)> = Vec::new();
    let mut attempts: u32 = 0;
    let mut last_err: Option<ProxyError> = None;
    let mut kept: Option<Kept> = None;
    // An upstream 401/403 seen in this request: it may have been provoked by the request
    // itself, so it sends at most one confirmation probe, and a second one ends the tries.
    let mut creds_rejected = false;
    let nominated = paths::connection_nominated(&parts.headers);
    let retry_after_cap_ms = shared.retry_after_cap.as_millis().min(u128::from(u64::MAX)) as u64;

    'attempts: loop {
        if attempts > model.max_retries {
            break;
        }
        let now = shared.clock.now_ms();
        let bi = match pin.take() {
            Some(i) => i,
            None => match route.selector.pick(
                &route.endpoints,
                &PickContext {
                    now_ms: now,
                    excluded: &excluded_b,
                    affinity,
                },
            ) {
                Some(p) => p.index,
                None => break,
            },
        };
        let backend = &route.backends[bi];
        let provider = &routing.providers[backend.provider];
        if !default_path && !paths::extra_allows(&provider.extra_paths, path) {
            excluded_b.push(bi);
            continue;
        }
        let excl_c: Vec<usize> = excluded_c
            .iter()
            .filter(|(p, _)| *p == backend.provider)
            .map(|&(_, c)| c)
            .collect();
        let Some(cp) = provider.cred_selector.pick(
            &provider.cred_endpoints,
            &PickContext {
                now_ms: now,
                excluded: &excl_c,
                affinity: None,
            },
        ) else {
            // No usable credential: the backend is not available for this request.
            excluded_b.push(bi);
            continue;
        };
        if attempts > 0 && !shared.budget.try_retry(now) {
            warn!(request_id = %fin.request_id, model = %model.name, "retry budget exhausted");
            break;
        }
        attempts += 1;
        fin.retries = attempts - 1;
        let cred = &provider.credentials[cp.index];

        let body = match &usage_edit {
            Some(edit) => {
                let mut edits = vec![edit.clone()];
                if !model_range.is_empty() {
                    edits.push((model_range.clone(), backend.upstream_model_json.clone()));
                }
                extract::splice_many(&bytes, &mut edits)
            }
            None if model_range.is_empty() => extract::Parts::whole(bytes.clone()),
            None => extract::splice(&bytes, model_range.clone(), &backend.upstream_model_json),
        };
        // The head is written straight from the client's headers: no header map is built.
        let mut up = provider.client.head(
            &Method::POST,
            upstream_path(provider.kind, &parts.uri),
            parts.headers.len() * 48 + 64,
        );
        for (n, v) in &parts.headers {
            if !paths::never_forwarded(n)
                && !provider.sets_header(n)
                && !paths::account_header_dropped(provider, n)
                && (nominated.is_empty() || !nominated.contains(n))
            {
                up.header(n, v);
            }
        }
        for (n, v) in &provider.static_headers {
            up.header(n, v);
        }
        up.header(&provider.auth_header, &cred.auth_value);

        let guards = [backend.state.start(), cred.state.start()];
        let t0 = Instant::now();
        let header_timeout = model.per_try_timeout.unwrap_or(provider.request_timeout);
        let deadline = tokio::time::Instant::now() + header_timeout;
        // A timeout while the backend answers other requests is a long request, not a dead
        // upstream; otherwise a probe tells the two apart before the breaker hears of it.
        let header_timeout_ms = header_timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        let timed_out = || {
            if backend
                .state
                .answered_since(now.saturating_sub(header_timeout_ms))
            {
                return;
            }
            if backend.state.consecutive_failures() > 0 {
                // Already failing (a probe or another failure said so): no need to ask.
                shared.transition(backend.state.record_failure(now, "timeout"), || {
                    HealthTarget::backend(&model.name, &backend.name, &provider.name)
                });
            } else {
                crate::health::confirm_timeout(
                    shared,
                    &routing,
                    &backend.state,
                    || HealthTarget::backend(&model.name, &backend.name, &provider.name),
                    backend.provider,
                    cp.index,
                );
            }
        };
        let resp = match tokio::time::timeout_at(deadline, provider.client.send(up, body.as_slice())).await {
            Err(_) => {
                timed_out();
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&vec![("kind", "timeout".into())])
                    .inc();
                excluded_b.push(bi);
                last_err = Some(ProxyError::Timeout);
                continue;
            }
            Ok(Err(e)) => {
                let label = if e.is_connect() { "connect" } else { "upstream" };
                // The detail (addresses, backend names) is the operator's: logged, not sent.
                warn!(request_id = %fin.request_id, backend = %backend.name, error = %e, "upstream attempt failed");
                shared.transition(backend.state.record_failure(now, label), || {
                    HealthTarget::backend(&model.name, &backend.name, &provider.name)
                });
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&vec![("kind", label.into())])
                    .inc();
                excluded_b.push(bi);
                last_err = Some(ProxyError::Connect);
                continue;
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        match status {
            401 | 403 => {
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&vec![("kind", "auth".into())])
                    .inc();
                warn!(request_id = %fin.request_id, provider = %provider.name, credential = %cred.name,
                    status, "upstream rejected the credential");
                excluded_c.push((backend.provider, cp.index));
                last_err = Some(ProxyError::CredentialRejected);
                if creds_rejected {
                    break;
                }
                creds_rejected = true;
                crate::health::confirm_credential(shared, &routing, backend.provider, cp.index, status);
                continue;
            }
            429 => {
                if let Some(ms) = retry_after_ms(resp.headers(), retry_after_cap_ms) {
                    cred.state.cool_down(now.saturating_add(ms));
                }
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&vec![("kind", "429".into())])
                    .inc();
                excluded_c.push((backend.provider, cp.index));
                kept = Some(Kept {
                    resp,
                    backend: bi,
                    cred: cp.index,
                });
                continue;
            }
            500 | 502 | 503 | 504 => {
                shared.transition(
                    backend.state.record_failure(now, &format!("upstream {status}")),
                    || HealthTarget::backend(&model.name, &backend.name, &provider.name),
                );
                shared
                    .metrics
                    .upstream_errors
                    .get_or_create(&vec![("kind", "5xx".into())])
                    .inc();
                excluded_b.push(bi);
                kept = Some(Kept {
                    resp,
                    backend: bi,
                    cred: cp.index,
                });
                continue;
            }
            _ => {}
        }
        let success = (200..300).contains(&status);
        let sse = is_sse(resp.headers());
        let (rparts, mut rbody) = resp.into_parts();
        let mut first = None;
        if sse && success {
            // Hold the status line back until the first event, so that a stream that
            // dies before it can still be retried elsewhere.
            loop {
                match tokio::time::timeout_at(deadline, rbody.frame()).await {
                    Err(_) => {
                        timed_out();
                        excluded_b.push(bi);
                        last_err = Some(ProxyError::Timeout);
                        continue 'attempts;
                    }
                    Ok(Some(Err(e))) => {
                        shared.transition(backend.state.record_failure(now, "stream failed"), || {
                            HealthTarget::backend(&model.name, &backend.name, &provider.name)
                        });
                        warn!(request_id = %fin.request_id, backend = %backend.name, error = %e,
                            "upstream stream failed before its first event");
                        excluded_b.push(bi);
                        last_err = Some(ProxyError::Upstream("the stream failed before its first event"));
                        continue 'attempts;
                    }
                    Ok(None) => break,
                    Ok(Some(Ok(f))) => {
                        if let Ok(d) = f.into_data() {
                            if !d.is_empty() {
                                first = Some(d);
                                break;
                            }
                        }
                    }
                }
            }
        }
        let ttfb = t0.elapsed();
        let ttfb_us = ttfb.as_micros() as u64;
        shared.transition(backend.state.record_success(now, ttfb_us), || {
            HealthTarget::backend(&model.name, &backend.name, &provider.name)
        });
        shared.transition(cred.state.record_success(now, ttfb_us), || {
            HealthTarget::credential(&provider.name, &cred.name)
        });
        fin.ttfb = Some(ttfb);
        let total = provider
            .total_timeout
            .map(|t| tokio::time::Instant::from_std(fin.start + t));
        return Ok(build_response(
            fin,
            &routing,
            bi,
            route,
            cp.index,
            rparts,
            first,
            rbody,
            sse,
            success,
            dialect,
            total,
            inject_usage,
            guards,
        ));
    }

    // Nothing succeeded: pass on a kept 429/5xx answer, or the last error.
    if let Some(k) = kept {
        let backend = &route.backends[k.backend];
        let provider = &routing.providers[backend.provider];
        let cred = &provider.credentials[k.cred];
        let guards = [backend.state.start(), cred.state.start()];
        let sse = is_sse(k.resp.headers());
        let (rparts, rbody) = k.resp.into_parts();
        let total = provider
            .total_timeout
            .map(|t| tokio::time::Instant::from_std(fin.start + t));
        return Ok(build_response(
            fin, &routing, k.backend, route, k.cred, rparts, None, rbody, sse, false, dialect, total, false,
            guards,
        ));
    }
    // Once every backend is out (ejected or excluded and unavailable), the model has no
    // healthy backend: say so (503) rather than report the last connect error (502).
    let now = shared.clock.now_ms();
    if matches!(last_err, Some(ProxyError::Connect))
        && !route.endpoints.iter().any(|e| e.state.is_available(now))
    {
        return Err(ProxyError::NoBackend(model.name.to_string()));
    }
    Err(last_err.unwrap_or_else(|| ProxyError::NoBackend(model.name.to_string())))
}

fn is_sse(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

#[allow(clippy::too_many_arguments)]
fn build_response(
    fin: &mut Finish,
    routing: &Routing,
    bi: usize,
    route: &crate::config::ModelRoute,
    ci: usize,
    rparts: http::response::Parts,
    first: Option<Bytes>,
    rbody: upstream::Body,
    sse: bool,
    success: bool,
    dialect: Dialect,
    total: Option<tokio::time::Instant>,
    strip_usage: bool,
    guards: [crate::balance::InflightGuard; 2],
) -> Response<ProxyBody> {
    let backend = &route.backends[bi];
    let provider = &routing.providers[backend.provider];
    let cred = &provider.credentials[ci];
    let retries = fin.retries;
    let mut f = fin.hand_over();
    f.backend = backend.name.clone();
    f.provider = provider.name.clone();
    f.credential = cred.name.clone();
    f.backend_metrics = Some(backend.metrics.clone());
    f.price = backend.price;
    f.stream |= sse;
    f.status = rparts.status.as_u16();
    f.error = None;
    let relay = RelayBody::new(
        first,
        rbody,
        sse,
        dialect,
        provider.idle_timeout,
        total,
        success,
        f,
        backend.state.clone(),
        strip_usage,
        guards,
    );
    let mut resp = Response::new(ProxyBody::Relay(Box::new(relay)));
    *resp.status_mut() = rparts.status;
    // The upstream's header map is relayed as it is (the upstream client keeps hop-by-hop
    // headers out of it).
    let mut h = rparts.headers;
    if sse {
        h.remove(header::CONTENT_LENGTH);
    }
    h.insert(&X_BACKEND, backend.name_header.clone());
    h.insert(&X_PROVIDER, provider.name_header.clone());
    h.insert(&X_RETRIES, retries_header(retries));
    *resp.headers_mut() = h;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_and_never_overflows() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            m
        };
        let cap = 600_000;
        assert_eq!(retry_after_ms(&h("2"), cap), Some(2_000));
        assert_eq!(retry_after_ms(&h(" 1.5 "), cap), Some(1_500));
        assert_eq!(retry_after_ms(&h("99999999"), cap), Some(cap));
        assert_eq!(retry_after_ms(&h("1e30"), cap), Some(cap));
        assert_eq!(retry_after_ms(&h("inf"), cap), None);
        assert_eq!(retry_after_ms(&h("NaN"), cap), None);
        assert_eq!(retry_after_ms(&h("-1"), cap), None);
        assert_eq!(retry_after_ms(&h("Wed, 21 Oct 2015 07:28:00 GMT"), cap), None);
        assert_eq!(u64::MAX.saturating_add(cap), u64::MAX);
    }
}
