//! Translation in the request path (issue 17 §3): a request whose backend is of the other
//! kind than the client's dialect (an OpenAI client on an Anthropic backend, or the
//! reverse) goes through `crate::translate` at three points, each a branch taken only
//! when the kinds differ, so a passthrough request pays one comparison per phase:
//!
//! - route (`route::next_target`): a backend of the other kind is picked only if the
//!   client's path has a translation ([`Xlate::pair`], decided once in `route::plan`)
//!   and the body translates ([`prepare`]; made once per upstream model and reused by a
//!   retry). A body that does not translate takes the other kind's backends out of the
//!   request; with none of its own kind left it answers 400 in the client's dialect,
//!   naming the field (`param`), before any upstream attempt.
//! - upstream request ([`build`]): the translated body, the backend's path (OpenAI-kind
//!   base URLs carry `/v1`), the client's headers minus its API's own (`anthropic-*`,
//!   `openai-*`: Claude Code's `anthropic-beta` means nothing to an OpenAI backend), and
//!   `anthropic-version` for an Anthropic backend.
//! - answer: a complete 2xx answer is read whole and translated before its head goes out
//!   ([`complete`]: an answer that does not translate is a 502, not a 200 with a broken
//!   body); a 2xx stream is translated event by event as it is relayed, and an error
//!   answer (relayed, or kept from a 429/5xx) is translated at its end
//!   ([`AnswerTranslator`], the body phase's `relay::Transform::Translate`). Usage is
//!   booked from the translator's count (cache reads and writes included).
//!
//! `max_tokens`, which Anthropic requires, is the model's `default_max_tokens`, else
//! [`DEFAULT_MAX_TOKENS`], for an OpenAI client that sets none.
//!
//! A Responses API answer translated from an Anthropic backend carries gateway response
//! ids (`respid`) like any other, naming the credential that answered: nothing is stored
//! there, so a stateful call on one is told so (`proxy::stateful`), and a
//! `previous_response_id` naming one reaches that backend and is refused by name by the
//! translation, instead of going to another account that never saw it.
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response};
use http_body_util::BodyExt as _;
use tracing::warn;

use crate::{
    account::{self, Outcome},
    balance::InflightGuard,
    body::ProxyBody,
    config::{Backend, Model, ModelRoute, ProviderKind},
    errors::{Dialect, ProxyError},
    extract,
    translate::{ClientApi, Pair, ResponseContext, StreamTranslator, TranslateOptions, ANTHROPIC_VERSION},
    upstream,
};

use super::{
    attempt::Answer, classify::Tries, filter::Inbound, retries_header, route::Target, Ctx, X_BACKEND,
    X_PROVIDER, X_RETRIES,
};

/// `max_tokens` for a translated request to an Anthropic backend whose OpenAI client set
/// no limit (Anthropic requires one), unless the model sets its own
/// (`default_max_tokens`).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The most of an answer buffered for translation: a complete answer (translated whole)
/// or an error body.
pub const MAX_BUFFERED_ANSWER: usize = 16 * 1024 * 1024;

static ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");

/// A request's translation state (part of `route::Plan`).
#[derive(Debug, Default)]
pub struct Xlate {
    /// The translation the route's backends of the other kind need; `None`: the client's
    /// path has none (or the route has no such backend), so they are never picked.
    pub pair: Option<Pair>,
    /// The request as translated for the last upstream model it was made for (boxed: a
    /// passthrough request's plan carries one pointer for it).
    done: Option<Box<Prepared>>,
    /// The body does not translate: the other kind's backends are out for this request.
    failed: bool,
}

impl Xlate {
    pub fn new(pair: Option<Pair>) -> Self {
        Self {
            pair,
            done: None,
            failed: false,
        }
    }
}

#[derive(Debug)]
struct Prepared {
    model: String,
    body: Bytes,
    path: &'static str,
    ctx: ResponseContext,
}

/// The client's API, for the paths translation knows.
pub fn client_api(path: &str) -> Option<ClientApi> {
    match path {
        "/v1/chat/completions" => Some(ClientApi::ChatCompletions),
        "/v1/responses" => Some(ClientApi::Responses),
        "/v1/messages" => Some(ClientApi::Messages),
        _ => None,
    }
}

/// The translation a request on `path` in `kind`'s dialect needs for `route`'s backends of
/// the other kind (`None` when it has none, or the path no translation).
pub fn pair_for(kind: ProviderKind, path: &str, route: &ModelRoute) -> Option<Pair> {
    if route.native == route.backends.len() {
        return None;
    }
    Pair::new(client_api(path)?, kind == ProviderKind::OpenAi)
}

/// The translation for the route's backend `bi` (`None`: one of the client's own kind).
pub fn pair_of(route: &ModelRoute, x: &Xlate, bi: usize) -> Option<Pair> {
    if bi < route.native {
        None
    } else {
        x.pair
    }
}

/// Whether `backend` (of the other kind) can take the request: the body translates for
/// it. A failure is remembered (the request's answer if nothing else is tried).
pub fn prepare(
    x: &mut Xlate,
    req: &Inbound<'_>,
    model: &Model,
    backend: &Backend,
    tries: &mut Tries,
) -> bool {
    let Some(pair) = x.pair.filter(|_| !x.failed) else {
        return false;
    };
    if x.done.as_ref().is_some_and(|d| d.model == backend.upstream_model) {
        return true;
    }
    let opts = TranslateOptions {
        default_max_tokens: model.default_max_tokens,
        max_completion_tokens: false,
        now_unix: crate::unix_ms() as u64 / 1000,
        model: Some(backend.upstream_model.clone()),
    };
    match pair.request(&req.body, &opts) {
        Ok(t) => {
            x.done = Some(Box::new(Prepared {
                model: backend.upstream_model.clone(),
                body: Bytes::from(t.body),
                path: t.path,
                ctx: t.ctx,
            }));
            true
        }
        Err(e) => {
            x.failed = true;
            if tries.last_err.is_none() {
                tries.last_err = Some(ProxyError::Translate(e));
            }
            false
        }
    }
}

/// The upstream request phase for a translated target: the translated body, the
/// backend's path, headers for its kind.
pub fn build(ctx: &Ctx<'_>, t: &Target<'_>) -> (upstream::RequestHead, extract::Parts) {
    let provider = t.provider;
    // `prepare` made it for this target's upstream model before the target was handed out.
    let (body, path) = match &ctx.plan.xlate.done {
        Some(d) => (d.body.clone(), d.path),
        None => (Bytes::new(), "/"),
    };
    let path = match provider.kind {
        ProviderKind::OpenAi => path.strip_prefix("/v1").unwrap_or(path),
        ProviderKind::Anthropic => path,
    };
    let headers = &ctx.req.parts.headers;
    let mut up = provider
        .client
        .head(&http::Method::POST, path, headers.len() * 48 + 96);
    let own_api =
        |n: &http::HeaderName| n.as_str().starts_with("anthropic-") || n.as_str().starts_with("openai-");
    super::upstream_request::client_headers(
        &mut up,
        headers,
        &ctx.req.nominated,
        provider,
        ctx.fin.trace.as_deref(),
        own_api,
    );
    for (n, v) in &provider.static_headers {
        up.header(n, v);
    }
    if provider.kind == ProviderKind::Anthropic && !provider.sets_header(&ANTHROPIC_VERSION_HEADER) {
        up.header(
            &ANTHROPIC_VERSION_HEADER,
            &HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    up.header(&provider.auth_header, &t.cred.auth_value);
    (up, extract::Parts::whole(body))
}

/// The answer goes through [`complete`] (a 2xx that is not a stream), not the relay.
pub fn completes(t: &Target<'_>, a: &Answer) -> bool {
    t.pair.is_some() && !a.sse && a.head.status.is_success()
}

/// A complete 2xx answer from a translated target: read whole (under the provider's idle
/// and total timeouts, at most [`MAX_BUFFERED_ANSWER`]), translated, booked with the
/// translator's usage, and answered with its own length. An answer that breaks off or
/// does not translate is a 502 in the client's dialect.
pub async fn complete(
    ctx: &mut Ctx<'_>,
    t: &Target<'_>,
    answer: Answer,
    guards: [InflightGuard; 2],
) -> Result<Response<ProxyBody>, ProxyError> {
    let Answer { head, mut body, .. } = answer;
    let total = t
        .provider
        .total_timeout
        .map(|d| tokio::time::Instant::from_std(ctx.fin.start + d));
    let read = read_whole(&mut body, t.provider.idle_timeout, total).await;
    drop(guards);
    if read.is_err() {
        let now = ctx.shared.clock.now_ms();
        t.backend.state.record_failure(now, "answer broke off");
    }
    let result = read.and_then(|buf| match (t.pair, &ctx.plan.xlate.done) {
        (Some(pair), Some(d)) => pair.answer(&buf, &d.ctx).map_err(ProxyError::Translate),
        _ => Err(ProxyError::Upstream("no translation for this answer")),
    });
    let (mut out, usage) = match result {
        Ok(x) => x,
        Err(e) => {
            warn!(request_id = %ctx.fin.request_id, backend = %t.backend.name, error = %e,
                "a translated answer could not be relayed");
            return Err(e);
        }
    };
    if let Some(mut ids) = id_rewriter(ctx, t) {
        let mut o = ids.feed(Bytes::from(out)).to_vec();
        if let Some(rest) = ids.finish() {
            o.extend_from_slice(&rest);
        }
        out = o;
    }
    let retries = ctx.fin.retries;
    let mut f = ctx.fin.hand_over();
    f.backend = t.backend.name.clone();
    f.provider = t.provider.name.clone();
    f.credential = t.cred.name.clone();
    f.backend_metrics = Some(t.backend.metrics.clone());
    f.status = head.status.as_u16();
    f.error = None;
    f.done(Outcome::Ok, Some(usage.to_account()));
    let mut resp = Response::new(ProxyBody::full(out));
    *resp.status_mut() = head.status;
    let mut h = head.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(&X_BACKEND, t.backend.name_header.clone());
    h.insert(&X_PROVIDER, t.provider.name_header.clone());
    h.insert(&X_RETRIES, retries_header(retries));
    *resp.headers_mut() = h;
    Ok(resp)
}

/// A Responses API client's answer: the translator's response ids go out as gateway ids
/// of the credential that answered.
fn id_rewriter(ctx: &Ctx<'_>, t: &Target<'_>) -> Option<crate::respid::Rewriter> {
    ctx.plan
        .response_ids
        .then(|| crate::respid::Rewriter::new(t.provider, t.ci, ctx.req.key.id.clone()))
}

async fn read_whole(
    body: &mut upstream::Body,
    idle: Duration,
    total: Option<tokio::time::Instant>,
) -> Result<Vec<u8>, ProxyError> {
    let mut buf = Vec::new();
    loop {
        let mut deadline = tokio::time::Instant::now() + idle;
        if let Some(t) = total {
            deadline = deadline.min(t);
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(None) => return Ok(buf),
            Ok(Some(Err(_))) => return Err(ProxyError::Upstream("the answer broke off")),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    if buf.len() + d.len() > MAX_BUFFERED_ANSWER {
                        return Err(ProxyError::Upstream("the answer is too large to translate"));
                    }
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
}

/// The body phase's translation of a relayed answer (`relay::Transform::Translate`).
pub struct AnswerTranslator {
    dialect: Dialect,
    mode: Mode,
    out: Vec<u8>,
    /// A Responses API client: the translated answer's response ids made gateway ids.
    ids: Option<crate::respid::Rewriter>,
}

enum Mode {
    /// A 2xx SSE answer, event by event; `failed` once it could not be translated (an
    /// error event went out, and the rest is read but not sent).
    Stream {
        t: Box<dyn StreamTranslator>,
        failed: bool,
        finished: bool,
    },
    /// Anything else (an error answer): buffered, translated at its end.
    Whole {
        pair: Pair,
        status: u16,
        success: bool,
        ctx: ResponseContext,
        buf: Vec<u8>,
        over: bool,
        finished: bool,
        usage: Option<account::Usage>,
    },
}

impl std::fmt::Debug for AnswerTranslator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerTranslator")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl AnswerTranslator {
    /// The translator for `answer` from `t`, a target that needs `pair`.
    pub fn new(ctx: &Ctx<'_>, t: &Target<'_>, pair: Pair, answer: &Answer) -> Self {
        let rctx = ctx
            .plan
            .xlate
            .done
            .as_ref()
            .map(|d| d.ctx.clone())
            .unwrap_or_default();
        let success = answer.head.status.is_success();
        let mode = if success && answer.sse {
            Mode::Stream {
                t: pair.stream(rctx),
                failed: false,
                finished: false,
            }
        } else {
            Mode::Whole {
                pair,
                status: answer.status(),
                success,
                ctx: rctx,
                buf: Vec::new(),
                over: false,
                finished: false,
                usage: None,
            }
        };
        Self {
            dialect: pair.client_dialect(),
            mode,
            out: Vec::new(),
            ids: id_rewriter(ctx, t),
        }
    }

    /// What the client gets of the next upstream chunk.
    pub fn feed(&mut self, b: Bytes) -> Bytes {
        let out = self.translate(b);
        match &mut self.ids {
            Some(ids) if !out.is_empty() => ids.feed(out),
            _ => out,
        }
    }

    /// The upstream's answer ended: the rest (a stream's last events, or the whole
    /// translated body).
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.translate_rest();
        let Some(ids) = &mut self.ids else {
            return rest;
        };
        let mut out = rest.map(|b| ids.feed(b).to_vec()).unwrap_or_default();
        if let Some(held) = ids.finish() {
            out.extend_from_slice(&held);
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    fn translate(&mut self, b: Bytes) -> Bytes {
        let dialect = self.dialect;
        match &mut self.mode {
            Mode::Stream { t, failed, .. } => {
                if *failed {
                    return Bytes::new();
                }
                self.out.clear();
                if let Err(e) = t.push(&b, &mut self.out) {
                    warn!(error = %e, "an upstream stream could not be translated");
                    *failed = true;
                    self.out
                        .extend_from_slice(&ProxyError::Translate(e).stream_event(dialect));
                }
                Bytes::copy_from_slice(&self.out)
            }
            Mode::Whole { buf, over, .. } => {
                if buf.len() + b.len() > MAX_BUFFERED_ANSWER {
                    *over = true;
                } else {
                    buf.extend_from_slice(&b);
                }
                Bytes::new()
            }
        }
    }

    fn translate_rest(&mut self) -> Option<Bytes> {
        let dialect = self.dialect;
        self.out.clear();
        match &mut self.mode {
            Mode::Stream { t, failed, finished } => {
                if std::mem::replace(finished, true) || *failed {
                    return None;
                }
                if let Err(e) = t.finish(&mut self.out) {
                    warn!(error = %e, "an upstream stream ended before its last event");
                    self.out
                        .extend_from_slice(&ProxyError::Translate(e).stream_event(dialect));
                }
            }
            Mode::Whole {
                pair,
                status,
                success,
                ctx,
                buf,
                over,
                finished,
                usage,
            } => {
                if std::mem::replace(finished, true) {
                    return None;
                }
                let body = if *over {
                    ProxyError::Upstream("the answer is too large to translate")
                        .body(dialect)
                        .to_vec()
                } else if *success {
                    match pair.answer(buf, ctx) {
                        Ok((b, u)) => {
                            *usage = Some(u.to_account());
                            b
                        }
                        Err(e) => ProxyError::Translate(e).body(dialect).to_vec(),
                    }
                } else {
                    pair.error(*status, buf)
                };
                self.out = body;
            }
        }
        (!self.out.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.out)))
    }

    /// Nothing is held back (what the translator keeps of an event counts as held until
    /// the upstream's end).
    pub fn is_empty(&self) -> bool {
        let translated = match &self.mode {
            Mode::Stream { finished, failed, .. } => *finished || *failed,
            Mode::Whole { finished, .. } => *finished,
        };
        translated && self.ids.as_ref().is_none_or(|ids| ids.is_empty())
    }

    /// The usage the translator read (`None`: none to book from it, e.g. an error).
    pub fn usage(&self) -> Option<account::Usage> {
        match &self.mode {
            Mode::Stream { t, .. } => Some(t.usage().to_account()),
            Mode::Whole { usage, .. } => *usage,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{classify::Tries, route, testing, upstream_request};
    use super::*;
    use crate::relay::Finish;

    /// An Anthropic client on model `m`, whose backends are OpenAI-kind: the translated
    /// body for the backend's model, its path without `/v1`, no `anthropic-*` header.
    #[test]
    fn a_messages_request_goes_to_an_openai_backend_translated() {
        let shared = testing::shared();
        let routing = testing::routing(&shared, &testing::snapshot());
        let mut fin = Finish::new(shared.clone(), "r".into(), "/v1/messages".into());
        let req = testing::inbound(
            &routing,
            "/v1/messages",
            r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#,
            &[
                ("x-api-key", "sk-test"),
                ("anthropic-version", "2023-06-01"),
                ("anthropic-beta", "claude-code-20250219"),
                ("x-custom", "1"),
            ],
        );
        let plan = route::plan(&shared, &routing, &req, &mut fin).unwrap();
        let mut ctx = Ctx {
            shared: &shared,
            routing: &routing,
            fin: &mut fin,
            dialect: Dialect::Anthropic,
            req,
            plan,
            tries: Tries::default(),
        };
        let t = route::next_target(&mut ctx).unwrap();
        assert_eq!(t.pair, Some(Pair::MessagesOnOpenAi));
        let (head, body) = upstream_request::build(&ctx, &t);
        let head = String::from_utf8(head.as_bytes().to_vec()).unwrap();
        // The base URL's `/v1`, then the path without it.
        assert!(
            head.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(!head.contains("anthropic-"), "{head}");
        assert!(!head.contains("sk-test"), "{head}");
        assert!(head.contains("x-custom: 1\r\n"), "{head}");
        let body: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
        assert_eq!(body["model"], format!("up-{}", t.backend.name));
        assert_eq!(body["max_tokens"], 9);
        assert_eq!(body["messages"][0]["content"], "hi");
    }

    /// A body that cannot be translated reaches no backend of the other kind: the
    /// request's answer is a 400 naming the field, and nothing was attempted.
    #[test]
    fn an_untranslatable_request_is_refused_before_any_attempt() {
        let shared = testing::shared();
        let routing = testing::routing(&shared, &testing::snapshot());
        let mut fin = Finish::new(shared.clone(), "r".into(), "/v1/messages".into());
        let req = testing::inbound(
            &routing,
            "/v1/messages",
            r#"{"model":"m","max_tokens":9,"top_k":3,"messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        );
        let plan = route::plan(&shared, &routing, &req, &mut fin).unwrap();
        let mut ctx = Ctx {
            shared: &shared,
            routing: &routing,
            fin: &mut fin,
            dialect: Dialect::Anthropic,
            req,
            plan,
            tries: Tries::default(),
        };
        assert!(route::next_target(&mut ctx).is_none());
        assert_eq!(ctx.tries.attempts, 0);
        let e = ctx.tries.last_err.take().unwrap();
        assert_eq!(e.status(), 400);
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["param"], "top_k", "{v}");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }

    /// The body phase's stream translation goes out event by event: what a read brings
    /// is translated before the upstream's next read (no buffering of the answer), and the
    /// usage booked is the translator's, cache reads included.
    #[test]
    fn a_stream_is_translated_as_it_comes() {
        let mut t = AnswerTranslator {
            dialect: Dialect::OpenAi,
            mode: Mode::Stream {
                t: Pair::ChatOnAnthropic.stream(ResponseContext {
                    stream: true,
                    include_usage: true,
                    ..Default::default()
                }),
                failed: false,
                finished: false,
            },
            out: Vec::new(),
            ids: None,
        };
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"cache_read_input_tokens\":5,\"cache_creation_input_tokens\":2}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
        let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n";
        let end = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        t.feed(Bytes::from(start));
        // The delta cut in two reads: nothing of it before its end, all of it at once then.
        let (a, b) = delta.split_at(40);
        assert!(!String::from_utf8_lossy(&t.feed(Bytes::from(a))).contains("Hello"));
        let out = t.feed(Bytes::from(b));
        assert!(
            String::from_utf8_lossy(&out).contains("\"content\":\"Hello\""),
            "{out:?}"
        );
        assert!(!t.is_empty(), "held until the upstream's end");
        let out = t.feed(Bytes::from(end));
        let rest = t.finish().unwrap_or_default();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&rest)
        );
        assert!(all.contains("\"finish_reason\":\"stop\""), "{all}");
        assert!(all.trim_end().ends_with("data: [DONE]"), "{all}");
        assert!(t.is_empty());
        let u = t.usage().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (17, 7, 5)
        );
    }

    /// A model with backends of both kinds in one tier: the client's own kind first (a
    /// half-tier ahead), the other kind's only once those are out.
    #[test]
    fn within_a_tier_the_clients_own_kind_goes_first() {
        let shared = testing::shared();
        let mut snap = testing::snapshot();
        let mut an = snap.providers[0].clone();
        an.name = "an".into();
        an.kind = "anthropic".into();
        an.base_url = "http://127.0.0.1:9".into();
        snap.providers.push(an);
        snap.models[0].backends[1].provider = "an".into();
        let routing = testing::routing(&shared, &snap);
        let m = &routing.models["m"];
        for (kind, own, other) in [(0, "a", "b"), (1, "b", "a")] {
            let r = m.routes[kind].as_ref().unwrap();
            assert_eq!(r.native, 1);
            assert_eq!(&*r.backends[0].name, own);
            assert_eq!(&*r.backends[1].name, other);
            assert_eq!((r.endpoints[0].priority, r.endpoints[1].priority), (0, 1));
            // One state per backend, whichever route reaches it.
            assert!(std::sync::Arc::ptr_eq(
                &r.backends[1].state,
                &m.routes[1 - kind].as_ref().unwrap().backends[0].state
            ));
        }
        let mut fin = Finish::new(shared.clone(), "r".into(), "/v1/chat/completions".into());
        let req = testing::inbound(
            &routing,
            "/v1/chat/completions",
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
            &[],
        );
        let mut ctx = testing::ctx(&shared, &routing, &mut fin, req);
        for _ in 0..5 {
            let t = route::next_target(&mut ctx).unwrap();
            assert_eq!((&*t.backend.name, t.pair), ("a", None));
            ctx.tries.attempts = 0;
        }
        ctx.tries.excluded_b.push(0);
        let t = route::next_target(&mut ctx).unwrap();
        assert_eq!((&*t.backend.name, t.pair), ("b", Some(Pair::ChatOnAnthropic)));
        let (head, _) = upstream_request::build(&ctx, &t);
        let head = String::from_utf8(head.as_bytes().to_vec()).unwrap();
        assert!(head.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("anthropic-version: 2023-06-01\r\n"), "{head}");
    }
}
