//! The Responses API's stateful calls: `GET`/`DELETE /v1/responses/{id}`,
//! `POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items`. They name no
//! model: the gateway id in the path (`respid`) names the provider account that made the
//! response, and only it can answer. The phases are the same, shorter: request filter
//! (authenticate, the id decoded for this client key) → upstream request (the upstream's
//! id in the path) → one attempt (no other account could answer, so no retry, and no
//! breaker bookkeeping: a missing response is not a sick backend) → response head → body
//! (ids rewritten out again) → logging.
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::{
    auth,
    body::ProxyBody,
    config::{ProviderKind, Routing},
    errors::{Dialect, ProxyError},
    paths,
    relay::{Finish, RelayBody, RelaySpec, Transform},
    respid, Shared,
};

use super::{attempt, retries_header, upstream_request, X_PROVIDER, X_REQUEST_ID, X_RETRIES};

/// Whether `method path` is one of the stateful calls.
pub fn is_stateful(method: &http::Method, path: &str) -> bool {
    split(path).is_some_and(|(_, sub)| {
        matches!(
            (method.as_str(), sub),
            ("GET" | "DELETE", "") | ("POST", "/cancel") | ("GET", "/input_items")
        )
    })
}

/// `/v1/responses/{id}{sub}` → (`id`, `sub`).
fn split(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/responses/")?;
    let (id, sub) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    (!id.is_empty()).then_some((id, sub))
}

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    memo: &auth::KeyMemo,
) -> Response<ProxyBody> {
    let request_id = super::request_id(req.headers());
    shared.budget.record_request(shared.clock.now_ms());
    let mut fin = Finish::new(shared.clone(), request_id.clone(), req.uri().path().to_string());
    let mut resp = match forward(&shared, req, &mut fin, memo).await {
        Ok(r) => r,
        Err(e) => super::respond::error(fin, e, Dialect::OpenAi, &request_id),
    };
    if let Some(v) = super::request_id_header(request_id) {
        resp.headers_mut().insert(&X_REQUEST_ID, v);
    }
    resp
}

async fn forward(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    fin: &mut Finish,
    memo: &auth::KeyMemo,
) -> Result<Response<ProxyBody>, ProxyError> {
    let routing: Arc<Routing> = shared.routing.load_full().ok_or(ProxyError::NoConfig)?;
    // Request filter.
    let key = auth::authenticate(&routing, req.headers(), crate::unix_ms(), memo)?;
    fin.key_id = key.id.clone();
    fin.key_name = key.name.clone();
    fin.team.clone_from(&key.team);
    let path = req.uri().path();
    let not_found = || ProxyError::NotFound(path.to_string());
    if !paths::well_formed(path) {
        return Err(not_found());
    }
    let (id, sub) = split(path).ok_or_else(not_found)?;
    // An id this client key was not given reads as one that does not exist.
    let d = respid::decode(&routing, &key.id, id).ok_or_else(not_found)?;
    let provider = &routing.providers[d.provider];
    if provider.kind != ProviderKind::OpenAi {
        // A Responses answer translated from an Anthropic backend (`proxy::translate`).
        return Err(ProxyError::NotFound(format!(
            "{path}: this response was answered through translation by an Anthropic backend, \
             which stores nothing; stored responses need an OpenAI-kind backend"
        )));
    }
    if !provider.enabled {
        return Err(not_found());
    }
    let cred = &provider.credentials[d.credential];
    let upstream_path = {
        let mut p = String::with_capacity(64 + sub.len());
        p.push_str("/responses/");
        p.push_str(&d.upstream_id);
        p.push_str(sub);
        if let Some(q) = req.uri().query() {
            p.push('?');
            p.push_str(q);
        }
        p
    };
    let (parts, body) = req.into_parts();
    let bytes = crate::body::read_body(body, shared.max_body_bytes, &shared.body_limits).await?;
    fin.provider = provider.name.clone();
    fin.credential = cred.name.clone();
    // Upstream request.
    let headers = &parts.headers;
    let mut up = provider
        .client
        .head(&parts.method, &upstream_path, headers.len() * 48 + 64);
    let nominated = paths::connection_nominated(headers);
    upstream_request::forward_headers(&mut up, headers, &nominated, provider, cred, None);
    // Attempt.
    let guard = cred.state.start();
    let answer = match attempt::send(
        &provider.client,
        provider.request_timeout,
        up,
        crate::extract::Parts::whole(bytes),
    )
    .await
    {
        attempt::Attempt::Answered(a) => a,
        attempt::Attempt::HeadTimeout | attempt::Attempt::FirstEventTimeout => {
            return Err(ProxyError::Timeout)
        }
        attempt::Attempt::SendFailed(e) | attempt::Attempt::StreamFailed(e) => {
            tracing::warn!(request_id = %fin.request_id, provider = %provider.name, error = %e,
                "upstream attempt failed");
            return Err(ProxyError::Connect);
        }
    };
    fin.ttfb = Some(answer.ttfb);
    // Response head, then the body and logging phases in the relayed body.
    let success = answer.head.status.is_success();
    let total = provider
        .total_timeout
        .map(|t| tokio::time::Instant::from_std(fin.start + t));
    let mut f = fin.hand_over();
    f.stream |= answer.sse;
    f.status = answer.head.status.as_u16();
    let relay = RelayBody::new(RelaySpec {
        first: answer.first,
        inner: answer.body,
        sse: answer.sse,
        success,
        dialect: Dialect::OpenAi,
        idle: provider.idle_timeout,
        total,
        transform: Some(Transform::ResponseIds(respid::Rewriter::new(
            provider,
            d.credential,
            key.id.clone(),
        ))),
        backend_state: None,
        guards: [Some(guard), None],
        finish: f,
    });
    let mut resp = Response::new(ProxyBody::Relay(relay));
    *resp.status_mut() = answer.head.status;
    let mut h = answer.head.headers;
    // The ids in the body change length.
    h.remove(http::header::CONTENT_LENGTH);
    h.insert(&X_PROVIDER, provider.name_header.clone());
    h.insert(&X_RETRIES, retries_header(0));
    *resp.headers_mut() = h;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn the_stateful_calls_and_nothing_else() {
        let yes = [
            (Method::GET, "/v1/responses/resp_1"),
            (Method::DELETE, "/v1/responses/resp_1"),
            (Method::POST, "/v1/responses/resp_1/cancel"),
            (Method::GET, "/v1/responses/resp_1/input_items"),
        ];
        for (m, p) in yes {
            assert!(is_stateful(&m, p), "{m} {p}");
        }
        let no = [
            (Method::POST, "/v1/responses"),
            (Method::POST, "/v1/responses/resp_1"),
            (Method::GET, "/v1/responses/"),
            (Method::GET, "/v1/responses"),
            (Method::DELETE, "/v1/responses/resp_1/cancel"),
            (Method::GET, "/v1/responses/resp_1/other"),
            (Method::PUT, "/v1/responses/resp_1"),
        ];
        for (m, p) in no {
            assert!(!is_stateful(&m, p), "{m} {p}");
        }
    }
}
