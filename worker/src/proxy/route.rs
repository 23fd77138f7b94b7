//! Route phase: the model and its route for the client's dialect ([`plan`], once per
//! request), then per attempt the next [`Target`] ([`next_target`]): a pinned backend or
//! tier → strategy/affinity → backend (`balance`), the provider's credential, and the
//! retry budget. Pure and synchronous: no I/O, no lock.
use std::ops::Range;

use bytes::Bytes;
use tracing::warn;

use crate::{
    balance::{stable_hash, PickContext},
    config::{Affinity, Backend, Credential, Model, ModelRoute, Provider, ProviderKind, Routing},
    errors::ProxyError,
    extract, paths,
    relay::Finish,
    Shared,
};

use super::{filter::Inbound, translate, Ctx, X_BACKEND};

/// Where a request may go, decided once.
#[derive(Debug)]
pub struct Plan<'a> {
    pub model: &'a Model,
    /// The model's backends reachable from the client's dialect.
    pub route: &'a ModelRoute,
    /// `stable_hash` of the affinity key, when the model has affinity and the request one.
    pub affinity: Option<u64>,
    /// A backend the key pinned (`x-switchyard-backend`), tried first.
    pub pin: Option<usize>,
    /// The worker asks an OpenAI stream for its usage (`include_usage`), and strips it
    /// from what the client sees.
    pub inject_usage: bool,
    /// The body edit that asks for it.
    pub usage_edit: Option<(Range<usize>, Bytes)>,
    /// Where the `model` value is in the body (empty: nowhere to rewrite).
    pub model_range: Range<usize>,
    /// Responses API (`POST /v1/responses`): response ids are rewritten both ways
    /// (`respid`).
    pub response_ids: bool,
    /// The account (provider, credential) that made the responses the request names:
    /// the only one that can answer it.
    pub account: Option<(usize, usize)>,
    /// The gateway ids in the body, with the upstream ids they go back to.
    pub id_edits: Vec<(Range<usize>, Bytes)>,
    /// Credential affinity (a Responses API session: `respid::session_affinity`).
    pub cred_affinity: Option<u64>,
    /// Translation for the route's backends of the other kind (`translate`).
    pub xlate: translate::Xlate,
}

/// The model, its route for the dialect, and what the body asks of routing.
pub fn plan<'a>(
    shared: &Shared,
    routing: &'a Routing,
    req: &Inbound<'_>,
    fin: &mut Finish,
) -> Result<Plan<'a>, ProxyError> {
    let head = &req.head;
    let model_name = head
        .model
        .as_deref()
        .ok_or_else(|| ProxyError::BadRequest("missing `model`".into()))?;
    // A model the key may not use gets the very answer of a model that does not exist, so
    // that a restricted key cannot learn which hidden models there are.
    // A name no model has may be one's alias (Claude Code's dated names); the key's
    // permission is for the model it names.
    let model = routing
        .models
        .get(model_name)
        .or_else(|| routing.models.get(routing.aliases.resolve(model_name)?))
        .filter(|m| m.enabled && req.key.may_use(&m.name))
        .ok_or_else(|| ProxyError::UnknownModel(model_name.to_string()))?;
    let path = req.path();
    // The model has no backend for this dialect: none of its kind, and none of the other
    // kind that a translation reaches from this path.
    let route = model.routes[req.kind.index()]
        .as_ref()
        .ok_or_else(|| ProxyError::no_backend_for_api(model_name, req.kind))?;
    let xlate = translate::Xlate::new(translate::pair_for(req.kind, path, route));
    if route.native == 0 && xlate.pair.is_none() {
        return Err(ProxyError::no_backend_for_api(model_name, req.kind));
    }
    if !req.default_path
        && !route
            .backends
            .iter()
            .any(|b| paths::extra_allows(&routing.providers[b.provider].extra_paths, path))
    {
        return Err(ProxyError::NotFound(path.to_string()));
    }
    fin.model = model.name.clone();
    fin.model_metrics = Some(model.metrics.clone());
    // Ask OpenAI streams for their usage so that they can be accounted; the extra chunk
    // is removed again in `relay` so the client sees the stream it asked for.
    let inject_usage = req.kind == ProviderKind::OpenAi
        && head.stream
        && head.include_usage != Some(true)
        && (path == "/v1/chat/completions" || path == "/v1/completions");
    let usage_edit = inject_usage.then(|| extract::include_usage_edit(&req.body, head));
    let headers = &req.parts.headers;
    let response_ids = req.kind == ProviderKind::OpenAi && path == "/v1/responses";
    let (id_edits, account, cred_affinity) = if response_ids {
        let (edits, account) = crate::respid::inbound(routing, &req.key.id, &req.body)
            .map_err(|e| ProxyError::BadRequest(e.into()))?;
        if let Some((pi, _)) = account {
            if !route.backends.iter().any(|b| b.provider == pi) {
                return Err(ProxyError::BadRequest(
                    "the response named was made through a provider this model does not use".into(),
                ));
            }
        }
        let session = account
            .is_none()
            .then(|| crate::respid::session_affinity(headers))
            .flatten();
        (edits, account, session)
    } else {
        (Vec::new(), None, None)
    };
    let affinity = match &model.affinity {
        Affinity::None => cred_affinity,
        Affinity::Header(h) => headers.get(h).map(|v| stable_hash(v.as_bytes())),
        Affinity::User => head.user.as_deref().map(|u| stable_hash(u.as_bytes())),
    };
    // Pinning skips tiers and strategies: a permission of the key.
    // (The header is looked up only for a key that may pin: a lookup costs a hash.)
    let pin = req
        .key
        .may_pin
        .then(|| headers.get(&X_BACKEND))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|name| route.backends.iter().position(|b| &*b.name == name))
        .filter(|&i| route.backends[i].state.is_available(shared.clock.now_ms()));
    // The model's limits (every key together), once the model is known; a refusal
    // releases what the key's limits reserved.
    if let Some(set) = &model.limits {
        let est = crate::limits::Estimate::of(req.body.len(), head.max_output);
        fin.limits
            .admit(1, set, est, crate::unix_ms(), &shared.limit_env())
            .map_err(ProxyError::RateLimited)?;
    }
    Ok(Plan {
        model,
        route,
        affinity,
        pin,
        inject_usage,
        usage_edit,
        model_range: head.model_range.clone().unwrap_or(0..0),
        response_ids,
        account,
        id_edits,
        cred_affinity,
        xlate,
    })
}

/// One attempt's destination: a backend of the route and a credential of its provider.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Index into the route's backends.
    pub bi: usize,
    pub backend: &'a Backend,
    pub provider: &'a Provider,
    /// Index into the provider's credentials.
    pub ci: usize,
    pub cred: &'a Credential,
    /// The monotonic ms the attempt started at (breaker and health bookkeeping).
    pub now: u64,
    /// How long the upstream has for its head (and an SSE answer for its first event).
    pub header_timeout: std::time::Duration,
    /// The backend is of the other kind than the client's dialect: the translation.
    pub pair: Option<crate::translate::Pair>,
}

/// The next backend and credential to try, or `None` when the request has no try left:
/// retries used up, no backend or credential left to pick, or the retry budget spent.
pub fn next_target<'a>(ctx: &mut Ctx<'a>) -> Option<Target<'a>> {
    let routing: &'a Routing = ctx.routing;
    let plan = &mut ctx.plan;
    let route = plan.route;
    let tries = &mut ctx.tries;
    loop {
        if tries.attempts > plan.model.max_retries {
            return None;
        }
        let now = ctx.shared.clock.now_ms();
        let bi = match plan.pin.take() {
            Some(i) => i,
            None => {
                let ctx = PickContext {
                    now_ms: now,
                    excluded: &tries.excluded_b,
                    affinity: plan.affinity,
                };
                route.selector.pick(&route.endpoints, &ctx)?.index
            }
        };
        let backend = &route.backends[bi];
        let provider = &routing.providers[backend.provider];
        if !ctx.req.default_path && !paths::extra_allows(&provider.extra_paths, ctx.req.path()) {
            tries.excluded_b.push(bi);
            continue;
        }
        // A backend of the other kind: only if the request translates for it.
        if bi >= route.native && !translate::prepare(&mut plan.xlate, &ctx.req, plan.model, backend, tries) {
            tries.excluded_b.push(bi);
            continue;
        }
        let ci = if let Some((pi, ci)) = plan.account {
            // Only the account that made the responses named can answer.
            if backend.provider != pi || tries.excluded_c.contains(&(pi, ci)) {
                tries.excluded_b.push(bi);
                continue;
            }
            ci
        } else {
            let excl_c: Vec<usize> = tries
                .excluded_c
                .iter()
                .filter(|(p, _)| *p == backend.provider)
                .map(|&(_, c)| c)
                .collect();
            let Some(cp) = provider.cred_selector.pick(
                &provider.cred_endpoints,
                &PickContext {
                    now_ms: now,
                    excluded: &excl_c,
                    affinity: plan.cred_affinity,
                },
            ) else {
                // No usable credential: the backend is not available for this request.
                tries.excluded_b.push(bi);
                continue;
            };
            cp.index
        };
        // The provider account's own limits (`credential:PROVIDER/NAME`): a credential
        // without headroom is skipped (the next one, then the next backend), so load
        // spreads under the provider's limits instead of meeting its 429s.
        if let Some(set) = &provider.credentials[ci].limits {
            let est = crate::limits::Estimate::of(ctx.req.body.len(), ctx.req.head.max_output);
            if let Err(r) =
                ctx.fin
                    .limits
                    .admit_credential(set, est, crate::unix_ms(), &ctx.shared.limit_env())
            {
                tries.excluded_c.push((backend.provider, ci));
                tries.last_err.get_or_insert(ProxyError::RateLimited(r));
                continue;
            }
        }
        if tries.attempts > 0 && !ctx.shared.budget.try_retry(now) {
            warn!(request_id = %ctx.fin.request_id, model = %plan.model.name, "retry budget exhausted");
            return None;
        }
        tries.attempts += 1;
        ctx.fin.retries = tries.attempts - 1;
        return Some(Target {
            bi,
            backend,
            provider,
            ci,
            cred: &provider.credentials[ci],
            now,
            header_timeout: plan.model.per_try_timeout.unwrap_or(provider.request_timeout),
            pair: translate::pair_of(route, &plan.xlate, bi),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{testing, upstream_request};
    use super::*;

    #[test]
    fn plan_finds_the_route_and_asks_streams_for_their_usage() {
        let shared = testing::shared();
        let routing = testing::routing(&shared, &testing::snapshot());
        let mut fin = Finish::new(shared.clone(), "r".into(), "/v1/chat/completions".into());
        let req = testing::inbound(
            &routing,
            "/v1/chat/completions",
            r#"{"model":"m","stream":true,"messages":[]}"#,
            &[],
        );
        let plan = plan(&shared, &routing, &req, &mut fin).unwrap();
        assert_eq!(&*plan.model.name, "m");
        assert_eq!(plan.route.backends.len(), 2);
        assert!(plan.inject_usage && plan.usage_edit.is_some());
        assert_eq!(&*fin.model, "m");
        // Not a stream; an unknown model; the other dialect: by translation on its API's
        // path, and on no other (`count_tokens` has no translation).
        let req = testing::inbound(&routing, "/v1/chat/completions", r#"{"model":"m"}"#, &[]);
        assert!(!plan_of(&shared, &routing, &req).inject_usage);
        let req = testing::inbound(&routing, "/v1/chat/completions", r#"{"model":"x"}"#, &[]);
        assert!(matches!(
            super::plan(&shared, &routing, &req, &mut fin),
            Err(ProxyError::UnknownModel(_))
        ));
        let req = testing::inbound(&routing, "/v1/messages", r#"{"model":"m"}"#, &[]);
        let p = plan_of(&shared, &routing, &req);
        assert_eq!(p.route.native, 0);
        assert_eq!(p.xlate.pair, Some(crate::translate::Pair::MessagesOnOpenAi));
        // An alias (a pattern) reaches its model, which the key's permission is about;
        // the upstream gets the backend's model.
        let mut snap = testing::snapshot();
        snap.models[0].aliases = vec!["claude-*-haiku-*".into()];
        let aliased = testing::routing(&shared, &snap);
        let req = testing::inbound(
            &aliased,
            "/v1/messages",
            r#"{"model":"claude-3-5-haiku-2024"}"#,
            &[],
        );
        assert_eq!(&*plan_of(&shared, &aliased, &req).model.name, "m");
        let req = testing::inbound(&aliased, "/v1/messages", r#"{"model":"claude-3-opus"}"#, &[]);
        assert!(matches!(
            super::plan(&shared, &aliased, &req, &mut fin),
            Err(ProxyError::UnknownModel(_))
        ));
        let req = testing::inbound(&routing, "/v1/messages/count_tokens", r#"{"model":"m"}"#, &[]);
        assert!(matches!(
            super::plan(&shared, &routing, &req, &mut fin),
            Err(ProxyError::NoBackendForApi(..))
        ));
    }

    fn plan_of<'a>(shared: &Shared, routing: &'a Routing, req: &Inbound<'_>) -> Plan<'a> {
        let mut fin = Finish::new(testing::shared(), "r".into(), "/".into());
        plan(shared, routing, req, &mut fin).unwrap()
    }

    /// Excluded backends are not picked again, and the model's retries bound the tries.
    #[test]
    fn targets_skip_what_failed_and_stop_after_the_retries() {
        let shared = testing::shared();
        let routing = testing::routing(&shared, &testing::snapshot());
        let mut fin = Finish::new(shared.clone(), "r".into(), "/v1/chat/completions".into());
        let req = testing::inbound(
            &routing,
            "/v1/chat/completions",
            r#"{"model":"m","stream":true,"messages":[]}"#,
            &[("authorization", "Bearer sk-test"), ("x-custom", "1")],
        );
        let mut ctx = testing::ctx(&shared, &routing, &mut fin, req);
        let t = next_target(&mut ctx).unwrap();
        assert_eq!(ctx.tries.attempts, 1);
        // The upstream request phase: the backend's model and `include_usage` spliced in,
        // the credential instead of the client's key, the client's other headers kept.
        let (head, body) = upstream_request::build(&ctx, &t);
        let body = String::from_utf8(body.to_bytes().to_vec()).unwrap();
        let want_model = format!("\"up-{}\"", t.backend.name);
        assert!(body.contains(&want_model), "{body}");
        assert!(
            body.ends_with(r#","stream_options":{"include_usage":true}}"#),
            "{body}"
        );
        let head = String::from_utf8(head.as_bytes().to_vec()).unwrap();
        assert!(
            head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("x-custom: 1\r\n"), "{head}");
        assert!(!head.contains("sk-test"), "{head}");
        assert!(
            head.contains(&format!("authorization: Bearer sk-{}\r\n", t.cred.name)),
            "{head}"
        );
        // The other backend next, then none: both are excluded.
        ctx.tries.excluded_b.push(t.bi);
        let u = next_target(&mut ctx).unwrap();
        assert_ne!(u.bi, t.bi);
        ctx.tries.excluded_b.push(u.bi);
        assert!(next_target(&mut ctx).is_none());
        // With a backend free again, the retries (2) still bound the tries to 3.
        ctx.tries.excluded_b.clear();
        assert!(next_target(&mut ctx).is_some());
        assert_eq!(ctx.fin.retries, 2);
        assert!(next_target(&mut ctx).is_none());
    }
}
