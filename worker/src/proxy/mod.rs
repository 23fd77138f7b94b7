//! The request path, as named phases over one per-request context ([`Ctx`]), the way
//! pingora's `ProxyHttp` hands each hook its `CTX`. [`forward`] reads top to bottom:
//!
//! | phase | file | what it does |
//! |---|---|---|
//! | dispatch | `mod.rs` ([`handle`]) | local answers (`/health` with counts only, `/ready`, `/v1/models`; `/metrics` is the ops listener's, `crate::ops`); the client's dialect from the path |
//! | request filter | `filter.rs` | authenticate, allowed path ([`filter::head_filter`]); the body read (in [`forward`] itself: no future of its own); scan it → [`filter::Inbound`] ([`filter::body_filter`]); the key's limits admit, wait for a slice, or refuse (429) ([`filter::admit_key`]) |
//! | route | `route.rs` | model → its route for the dialect ([`route::Plan`]), the model's limits; per attempt: pin or tier → strategy → backend → credential, retry budget → a [`route::Target`] |
//! | upstream request | `upstream_request.rs` | the body and head for the target's provider (model rewrite, `include_usage`); a backend of the other kind gets the translated request (`translate.rs`) |
//! | attempt | `attempt.rs` | send under the per-try deadline; hold an SSE answer back until its first event → an [`attempt::Attempt`] |
//! | classify + record | `classify.rs` | [`classify::classify`]`(attempt) -> Verdict`, and the one place that books a verdict (breaker, health, metrics, exclusions, kept answer, retry or not) |
//! | response head | `respond.rs` | status and headers to the client, or the kept answer / error once nothing succeeded |
//! | body | `relay.rs` (`RelayBody`, `relay::Transform`) | frame by frame: timeouts, the stream transform (usage strip, response ids, translation: `translate::AnswerTranslator`), usage |
//! | logging | `relay.rs` (`Finish`) | access line, metrics, usage event: once per request |
//!
//! The Responses API's stateful calls (`GET /v1/responses/{id}`…) name no model: they
//! take a shorter path through the same phases (`stateful.rs`), routed by the gateway id
//! (`respid`).
//!
//! Each phase is a plain function of the context and its inputs, testable without
//! sockets; only `attempt` does I/O.
use std::sync::Arc;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::{
    auth,
    body::ProxyBody,
    config::{ProviderKind, Routing},
    errors::{Dialect, ProxyError},
    relay::Finish,
    Shared,
};

pub mod attempt;
pub mod classify;
pub mod filter;
pub mod respond;
pub mod route;
pub mod stateful;
pub mod translate;
pub mod upstream_request;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_BACKEND: HeaderName = HeaderName::from_static("x-switchyard-backend");
pub(crate) static X_PROVIDER: HeaderName = HeaderName::from_static("x-switchyard-provider");
pub(crate) static X_RETRIES: HeaderName = HeaderName::from_static("x-switchyard-retries");

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
        // Counts only: the names, states and errors are the ops port's (`crate::ops`).
        (&Method::GET, "/health") => crate::health::health_response(&shared, crate::health::Detail::Counts),
        (&Method::GET, "/ready") => ready_response(&shared),
        (&Method::GET, "/v1/models") => models_response(&shared, req.headers(), &memo),
        // Boxed: a rare path, whose state would otherwise make every request's future
        // (moved into its box by the server, `server::serve`) larger.
        (m, p) if stateful::is_stateful(m, p) => Box::pin(stateful::handle(shared, req, &memo)).await,
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

pub(crate) fn ready_response(shared: &Shared) -> Response<ProxyBody> {
    let ready = !shared.draining() && shared.routing.load().is_some();
    let mut r = Response::new(ProxyBody::full(if ready { "ready\n" } else { "not ready\n" }));
    if !ready {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

/// `GET /v1/models` in the asker's format: Anthropic's list (`type: model`, `has_more`,
/// `first_id`/`last_id`) for an Anthropic-style request (an `anthropic-version` or
/// `x-api-key` header: Claude Code's model picker), else OpenAI's.
fn models_response(shared: &Shared, headers: &HeaderMap, memo: &auth::KeyMemo) -> Response<ProxyBody> {
    let dialect = if headers.contains_key("anthropic-version") || headers.contains_key("x-api-key") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    let Some(routing) = shared.routing.load_full() else {
        return ProxyError::NoConfig.into_response(dialect);
    };
    let key = match auth::authenticate(&routing, headers, crate::unix_ms(), memo) {
        Ok(k) => k,
        Err(e) => return e.into_response(dialect),
    };
    let names = routing.model_names.iter().filter(|m| key.may_use(m));
    let body = match dialect {
        Dialect::OpenAi => {
            let data: Vec<_> = names
                .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "switchyard"}))
                .collect();
            serde_json::json!({"object": "list", "data": data})
        }
        Dialect::Anthropic => {
            let data: Vec<_> = names
                .map(|m| {
                    serde_json::json!({"type": "model", "id": m, "display_name": m,
                        "created_at": "1970-01-01T00:00:00Z"})
                })
                .collect();
            let first = data.first().map(|m| m["id"].clone());
            let last = data.last().map(|m| m["id"].clone());
            serde_json::json!({"data": data, "has_more": false, "first_id": first, "last_id": last})
        }
    };
    let mut r = Response::new(ProxyBody::full(body.to_string()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `x-switchyard-retries`: the usual small counts without an allocation each.
pub(crate) fn retries_header(n: u32) -> HeaderValue {
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

/// A proxied request: runs the phases ([`forward`]) and answers an error that ended them
/// early in the client's dialect.
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
    // (`Finish::hand_over` in `respond::response_head`).
    let mut fin = Finish::new(shared.clone(), request_id.clone(), req.uri().path().to_string());
    // The one per-request branch of tracing: off, `tracer` is `None` and nothing else runs.
    if let Some(tracer) = &shared.tracer {
        fin.trace = crate::trace::ReqTrace::start(tracer, req.headers(), kind);
    }
    let result = forward(&shared, req, kind, dialect, &mut fin, memo).await;
    // The remaining-quota headers of the key's (and model's) enforced limits, refused or
    // not, replacing an upstream's of the same names.
    let quota = fin.limits.quota();
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => respond::error(fin, e, dialect, &request_id),
    };
    if let Some((q, now)) = quota {
        q.write(dialect, now, resp.headers_mut());
    }
    if let Some(v) = request_id_header(request_id) {
        resp.headers_mut().insert(&X_REQUEST_ID, v);
    }
    resp
}

/// The `x-request-id` answer header, made from the id's own bytes (`HeaderValue::from_str`
/// would copy them into a new allocation): the same check of every byte.
pub(crate) fn request_id_header(id: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id)).ok()
}

/// The per-request context every phase after the request filter reads and writes: the
/// snapshot, the request, its plan and what the attempts so far left behind. A new
/// phase adds a field here, not a parameter to every call.
pub struct Ctx<'a> {
    pub shared: &'a Arc<Shared>,
    pub routing: &'a Arc<Routing>,
    /// The request's bookkeeping (logging phase), filled in as phases learn more.
    pub fin: &'a mut Finish,
    /// The client's dialect (the wire format of its request, answer and errors).
    pub dialect: Dialect,
    /// What the request filter read.
    pub req: filter::Inbound<'a>,
    /// Where the request may go.
    pub plan: route::Plan<'a>,
    /// What the attempts so far left behind.
    pub tries: classify::Tries,
}

/// The phases, top to bottom: request filter → route → (upstream request → attempt →
/// classify and record)* → response head. The body and logging phases run in the relayed
/// body (`relay::RelayBody`, `relay::Finish`).
async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    kind: ProviderKind,
    dialect: Dialect,
    fin: &mut Finish,
    memo: &auth::KeyMemo,
) -> Result<Response<ProxyBody>, ProxyError> {
    let routing: Arc<Routing> = shared.routing.load_full().ok_or(ProxyError::NoConfig)?;
    // The request filter, around the body's read.
    let (parts, body) = req.into_parts();
    let asker = filter::head_filter(&routing, &parts, kind, fin, memo)?;
    let bytes = crate::body::read_body(body, shared.max_body_bytes, &shared.body_limits).await?;
    let req = filter::body_filter(parts, bytes, kind, asker, fin)?;
    // The key's limits, then the model's (in `plan`): a refusal for this worker's spent
    // slice only waits for the next one (`limits::wait_for_grant`), re-trying at each grant.
    if let Err(r) = filter::admit_key(shared, &req, fin) {
        let (req, fin) = (&req, &mut *fin);
        crate::limits::wait_for_grant(shared, r, move || filter::admit_key(shared, req, fin))
            .await
            .map_err(ProxyError::RateLimited)?;
    }
    let plan = match route::plan(shared, &routing, &req, fin) {
        Err(ProxyError::RateLimited(r)) => {
            let (routing, req, fin) = (&routing, &req, &mut *fin);
            crate::limits::wait_for_grant(shared, r, move || match route::plan(shared, routing, req, fin) {
                Err(ProxyError::RateLimited(r)) => Err(r),
                other => Ok(other),
            })
            .await
            .map_err(ProxyError::RateLimited)??
        }
        plan => plan?,
    };
    let mut ctx = Ctx {
        shared,
        routing: &routing,
        fin,
        dialect,
        req,
        plan,
        tries: classify::Tries::default(),
    };
    while let Some(target) = route::next_target(&mut ctx) {
        if let Some(t) = ctx.fin.trace.as_deref_mut() {
            t.attempt_start(&target);
        }
        let (head, body) = upstream_request::build(&ctx, &target);
        // The backend's and credential's in-flight counts, for this attempt (and the
        // relayed body, if it is the answer).
        let guards = [target.backend.state.start(), target.cred.state.start()];
        let mut attempt = attempt::send(&target.provider.client, target.header_timeout, head, body).await;
        let verdict = classify::classify(&attempt);
        if let Some(t) = ctx.fin.trace.as_deref_mut() {
            t.attempt_end(&attempt, verdict);
        }
        match classify::record(&mut ctx, &target, &mut attempt, verdict) {
            classify::Next::Try => {}
            classify::Next::Stop => break,
            classify::Next::Relay => {
                if let attempt::Attempt::Answered(answer) = attempt {
                    if translate::completes(&target, &answer) {
                        // Boxed: translated answers only; unboxed, their read-whole
                        // state would make every request's future larger.
                        return Box::pin(translate::complete(&mut ctx, &target, answer, guards)).await;
                    }
                    return Ok(respond::response_head(&mut ctx, &target, answer, guards));
                }
                break;
            }
        }
    }
    respond::nothing_succeeded(ctx)
}

#[cfg(test)]
pub(crate) mod testing;
