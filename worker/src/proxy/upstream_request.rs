//! Upstream request phase: the body and head that go to one [`Target`]. Today: the
//! backend's model spliced into the client's bytes (never re-serialised, never copied:
//! `extract::Parts`), `include_usage` for OpenAI streams, the client's headers minus the
//! ones that never go upstream, the provider's static headers and the credential.
//!
//! Translation branches off here: a target of the other kind than the client's dialect
//! (`Target::pair`) gets the translated body, path and headers (`proxy::translate`), and
//! the body phase (`relay::Transform::Translate`) translates the answer back.
use http::Method;

use crate::{
    config::{Credential, Provider, ProviderKind},
    extract, paths, upstream,
};

use super::{route::Target, Ctx};

/// The head (request line and headers, written straight from the client's headers: no
/// header map is built) and the body pieces for `t`.
pub fn build(ctx: &Ctx<'_>, t: &Target<'_>) -> (upstream::RequestHead, extract::Parts) {
    if t.pair.is_some() {
        return super::translate::build(ctx, t);
    }
    let req = &ctx.req;
    let plan = &ctx.plan;
    let body = match &plan.usage_edit {
        Some(edit) => {
            let mut edits = vec![edit.clone()];
            if !plan.model_range.is_empty() {
                edits.push((plan.model_range.clone(), t.backend.upstream_model_json.clone()));
            }
            extract::splice_many(&req.body, &mut edits)
        }
        None if !plan.id_edits.is_empty() => {
            // Gateway response ids back to the upstream's (none overlaps the model: the
            // model's value is one JSON string, and so is each id).
            let mut edits: Vec<_> = plan
                .id_edits
                .iter()
                .filter(|(r, _)| r.end <= plan.model_range.start || r.start >= plan.model_range.end)
                .cloned()
                .collect();
            if !plan.model_range.is_empty() {
                edits.push((plan.model_range.clone(), t.backend.upstream_model_json.clone()));
            }
            extract::splice_many(&req.body, &mut edits)
        }
        None if plan.model_range.is_empty() => extract::Parts::whole(req.body.clone()),
        None => extract::splice(
            &req.body,
            plan.model_range.clone(),
            &t.backend.upstream_model_json,
        ),
    };
    let provider = t.provider;
    let headers = &req.parts.headers;
    let mut up = provider.client.head(
        &Method::POST,
        upstream_path(provider.kind, &req.parts.uri),
        headers.len() * 48 + 64,
    );
    forward_headers(
        &mut up,
        headers,
        &req.nominated,
        provider,
        t.cred,
        ctx.fin.trace.as_deref(),
    );
    (up, body)
}

/// The client's headers that go upstream (never its credentials, the hop-by-hop and
/// `Connection`-nominated ones, nor account-selecting ones the provider does not allow),
/// the provider's static headers and the credential. A sampled request (`trace`) sends
/// its own trace context instead of the client's.
pub fn forward_headers(
    up: &mut upstream::RequestHead,
    headers: &http::HeaderMap,
    nominated: &[http::HeaderName],
    provider: &Provider,
    cred: &Credential,
    trace: Option<&crate::trace::ReqTrace>,
) {
    client_headers(up, headers, nominated, provider, trace, |_| false);
    for (n, v) in &provider.static_headers {
        up.header(n, v);
    }
    up.header(&provider.auth_header, &cred.auth_value);
}

/// The client's headers that go upstream (see [`forward_headers`]), less those `skip`
/// names (a translated request drops the client dialect's own headers). A sampled
/// request (`trace`) replaces the client's `traceparent` and `tracestate` with its own
/// (the attempt's span as the parent); otherwise they go upstream as the client sent them.
pub fn client_headers(
    up: &mut upstream::RequestHead,
    headers: &http::HeaderMap,
    nominated: &[http::HeaderName],
    provider: &Provider,
    trace: Option<&crate::trace::ReqTrace>,
    skip: impl Fn(&http::HeaderName) -> bool,
) {
    match trace {
        None => copy_headers(up, headers, nominated, provider, skip),
        Some(t) => {
            copy_headers(up, headers, nominated, provider, |n| {
                skip(n) || crate::trace::is_context_header(n)
            });
            t.inject(up);
        }
    }
}

fn copy_headers(
    up: &mut upstream::RequestHead,
    headers: &http::HeaderMap,
    nominated: &[http::HeaderName],
    provider: &Provider,
    skip: impl Fn(&http::HeaderName) -> bool,
) {
    for (n, v) in headers {
        if paths::forwarded(provider, n) && (nominated.is_empty() || !nominated.contains(n)) && !skip(n) {
            up.header(n, v);
        }
    }
}

/// The upstream path for a client path: OpenAI-kind base URLs already end in `/v1`.
pub fn upstream_path(kind: ProviderKind, uri: &http::Uri) -> &str {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    match kind {
        ProviderKind::OpenAi => pq.strip_prefix("/v1").unwrap_or(pq),
        ProviderKind::Anthropic => pq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_base_urls_carry_the_v1() {
        let u: http::Uri = "/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(upstream_path(ProviderKind::OpenAi, &u), "/chat/completions?x=1");
        assert_eq!(
            upstream_path(ProviderKind::Anthropic, &u),
            "/v1/chat/completions?x=1"
        );
    }
}
