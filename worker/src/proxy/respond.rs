//! Response head phase: the status and headers the client gets, with the relayed body
//! set up (`relay::RelayBody`: the body and logging phases) — for the answer of an
//! attempt, for a kept 429/5xx answer once nothing did better, or an error in the
//! client's dialect.
use http::{header, Response};

use crate::{
    account::Outcome,
    balance::InflightGuard,
    body::ProxyBody,
    errors::{Dialect, ProxyError},
    relay::{Finish, RelayBody, RelaySpec, Transform},
};

use super::{attempt::Answer, retries_header, route::Target, Ctx, X_BACKEND, X_PROVIDER, X_RETRIES};

/// The client's response for `answer`, from `t`'s backend and credential. `guards` (the
/// in-flight counts) live as long as the relayed body.
pub fn response_head(
    ctx: &mut Ctx<'_>,
    t: &Target<'_>,
    answer: Answer,
    guards: [InflightGuard; 2],
) -> Response<ProxyBody> {
    let success = answer.head.status.is_success();
    // The worker added `include_usage` upstream: the client sees the stream it asked for.
    let transform = if let Some(pair) = t.pair {
        // A backend of the other kind: the client sees the answer in its own dialect.
        Some(Transform::Translate(Box::new(
            super::translate::AnswerTranslator::new(ctx, t, pair, &answer),
        )))
    } else if ctx.plan.inject_usage && answer.sse && success {
        Some(Transform::strip_usage())
    } else if ctx.plan.response_ids {
        Some(Transform::ResponseIds(crate::respid::Rewriter::new(
            t.provider,
            t.ci,
            ctx.req.key.id.clone(),
        )))
    } else {
        None
    };
    let total = t
        .provider
        .total_timeout
        .map(|d| tokio::time::Instant::from_std(ctx.fin.start + d));
    let retries = ctx.fin.retries;
    let mut f = ctx.fin.hand_over();
    f.backend = t.backend.name.clone();
    f.provider = t.provider.name.clone();
    f.credential = t.cred.name.clone();
    f.backend_metrics = Some(t.backend.metrics.clone());
    f.price = t.backend.price;
    f.stream |= answer.sse;
    f.status = answer.head.status.as_u16();
    f.error = None;
    // Fields are moved out one by one: the body holds its connection inline, and each
    // move of the whole answer is a copy.
    let sse = answer.sse;
    // A transformed body has another length.
    let drop_length = sse || transform.is_some();
    let relay = RelayBody::new(RelaySpec {
        first: answer.first,
        inner: answer.body,
        sse,
        success,
        dialect: ctx.dialect,
        idle: t.provider.idle_timeout,
        total,
        transform,
        backend_state: Some(t.backend.state.clone()),
        guards: guards.map(Some),
        finish: f,
    });
    let mut resp = Response::new(ProxyBody::Relay(relay));
    *resp.status_mut() = answer.head.status;
    // The upstream's header map is relayed as it is (the upstream client keeps hop-by-hop
    // headers out of it).
    let mut h = answer.head.headers;
    if drop_length {
        h.remove(header::CONTENT_LENGTH);
    }
    h.insert(&X_BACKEND, t.backend.name_header.clone());
    h.insert(&X_PROVIDER, t.provider.name_header.clone());
    h.insert(&X_RETRIES, retries_header(retries));
    *resp.headers_mut() = h;
    resp
}

/// Nothing succeeded: pass on a kept 429/5xx answer, or the last error.
pub fn nothing_succeeded(mut ctx: Ctx<'_>) -> Result<Response<ProxyBody>, ProxyError> {
    let route = ctx.plan.route;
    if let Some(k) = ctx.tries.kept.take() {
        let backend = &route.backends[k.bi];
        let provider = &ctx.routing.providers[backend.provider];
        let cred = &provider.credentials[k.ci];
        let guards = [backend.state.start(), cred.state.start()];
        let t = Target {
            bi: k.bi,
            backend,
            provider,
            ci: k.ci,
            cred,
            now: 0,
            header_timeout: provider.request_timeout,
            pair: super::translate::pair_of(route, &ctx.plan.xlate, k.bi),
        };
        // Relayed as it came: not a success, so no stream transform.
        return Ok(response_head(&mut ctx, &t, k.answer, guards));
    }
    // Once every backend is out (ejected or excluded and unavailable), the model has no
    // healthy backend: say so (503) rather than report the last connect error (502).
    let now = ctx.shared.clock.now_ms();
    let model = ctx.plan.model;
    if matches!(ctx.tries.last_err, Some(ProxyError::Connect))
        && !route.endpoints.iter().any(|e| e.state.is_available(now))
    {
        return Err(ProxyError::NoBackend(model.name.to_string()));
    }
    Err(ctx
        .tries
        .last_err
        .take()
        .unwrap_or_else(|| ProxyError::NoBackend(model.name.to_string())))
}

/// An error that ended the phases early, booked and answered in the client's dialect.
pub fn error(mut fin: Finish, e: ProxyError, dialect: Dialect, request_id: &str) -> Response<ProxyBody> {
    fin.status = e.status().as_u16();
    fin.error = Some(e.label());
    let outcome = match e {
        ProxyError::NoBackend(_) | ProxyError::NoConfig => Outcome::NoBackend,
        ProxyError::Connect
        | ProxyError::Timeout
        | ProxyError::Upstream(_)
        | ProxyError::CredentialRejected => Outcome::UpstreamError,
        ProxyError::Translate(ref t) if t.status() != 400 => Outcome::UpstreamError,
        _ => Outcome::Rejected,
    };
    let retries = fin.retries;
    // Upstream errors were counted per attempt (`classify::record`).
    fin.done(outcome, None);
    let mut r = e.into_response_for(dialect, Some(request_id));
    if retries > 0 {
        r.headers_mut().insert(&X_RETRIES, retries_header(retries));
    }
    r
}
