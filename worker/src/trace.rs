//! A request's trace, recorded while it runs and built into spans after the fact, where it
//! settles (`relay::Finish`): one SERVER span with the GenAI attributes and one CLIENT
//! child span per upstream attempt (retries visible, with what each attempt excluded).
//!
//! Cost: the decision is made once per request (`proxy::proxy`: one branch on
//! `Shared::tracer`, then the sampler). A request that is not sampled carries `None` in
//! `Finish::trace` and pays a branch on it per attempt and at its end; nothing is
//! allocated and no `tracing` span is made. A sampled request boxes one `ReqTrace`, and
//! builds its spans when it settles, handing them to the export queue
//! (`switchyard_otel::Tracer::submit`, which never waits).
//!
//! Content: no prompt or completion text, no header value and no secret is recorded; the
//! credential appears by its name.
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http::HeaderName;
use switchyard_otel::{KeyValue, Span, SpanKind, Status, Tracer};

use crate::{
    account::{Outcome, Usage},
    config::ProviderKind,
    proxy::{attempt::Attempt, classify::Verdict, route::Target},
    relay::Finish,
    upstream,
};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether a client header is trace context (replaced by the worker's own on a sampled
/// request; forwarded untouched otherwise).
pub fn is_context_header(n: &HeaderName) -> bool {
    *n == TRACEPARENT || *n == TRACESTATE
}

/// What a sampled request records for its spans.
#[derive(Debug)]
pub struct ReqTrace {
    tracer: Arc<Tracer>,
    cx: switchyard_otel::ServerContext,
    /// Wall clock and monotonic clock at the request's start: span times are
    /// `start + (instant - t0)`.
    start: SystemTime,
    t0: Instant,
    /// The client's dialect (the provider name when no attempt answered).
    dialect: ProviderKind,
    attempts: Vec<AttemptRec>,
}

#[derive(Debug)]
struct AttemptRec {
    span_id: u64,
    start: Instant,
    /// `None`: the answer that was relayed; it ends with the request.
    end: Option<Instant>,
    backend: Arc<str>,
    provider: Arc<str>,
    kind: ProviderKind,
    credential: Arc<str>,
    model: Arc<str>,
    base_url: Arc<str>,
    translated: bool,
    status: u16,
    /// The error class (`None`: relayed).
    error: Option<&'static str>,
    /// What the request excluded after this attempt (`backend`, `credential`).
    excluded: Option<&'static str>,
    ttfb: Option<Duration>,
}

fn kind_name(k: ProviderKind) -> &'static str {
    match k {
        ProviderKind::OpenAi => "openai",
        ProviderKind::Anthropic => "anthropic",
    }
}

/// `gen_ai.operation.name` for an endpoint path.
pub fn operation(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" | "/v1/messages" | "/v1/responses" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        _ => "other",
    }
}

impl ReqTrace {
    /// The sampling decision for a request (`None`: not sampled).
    pub fn start(
        tracer: &Arc<Tracer>,
        headers: &http::HeaderMap,
        dialect: ProviderKind,
    ) -> Option<Box<Self>> {
        let cx = tracer.start_server(headers)?;
        Some(Box::new(Self {
            tracer: tracer.clone(),
            cx,
            start: SystemTime::now(),
            t0: Instant::now(),
            dialect,
            attempts: Vec::with_capacity(2),
        }))
    }

    /// An attempt at `t` begins: its span id is the parent the upstream hears of.
    pub fn attempt_start(&mut self, t: &Target<'_>) {
        // A translated target is asked for the backend's model too.
        let model: Arc<str> = Arc::from(t.backend.upstream_model.as_str());
        self.attempts.push(AttemptRec {
            span_id: switchyard_otel::new_span_id(),
            start: Instant::now(),
            end: None,
            backend: t.backend.name.clone(),
            provider: t.provider.name.clone(),
            kind: t.provider.kind,
            credential: t.cred.name.clone(),
            model,
            base_url: Arc::from(t.provider.base_url.as_str()),
            translated: t.pair.is_some(),
            status: 0,
            error: None,
            excluded: None,
            ttfb: None,
        });
    }

    /// The attempt's verdict (before `classify::record` takes a kept answer out of it).
    pub fn attempt_end(&mut self, a: &Attempt, verdict: Verdict) {
        let Some(rec) = self.attempts.last_mut() else {
            return;
        };
        if let Attempt::Answered(ans) = a {
            rec.status = ans.status();
            rec.ttfb = Some(ans.ttfb);
        }
        rec.error = match verdict {
            Verdict::Relay => None,
            Verdict::Timeout => Some("timeout"),
            Verdict::Unreachable { connect: true } => Some("connect"),
            Verdict::Unreachable { connect: false } => Some("upstream"),
            Verdict::StreamBroke => Some("stream_broke"),
            Verdict::CredentialRejected => Some("credential_rejected"),
            Verdict::RateLimited => Some("rate_limited"),
            Verdict::ServerError => Some("server_error"),
        };
        rec.excluded = match verdict.excludes() {
            crate::proxy::classify::Exclude::Nothing => None,
            crate::proxy::classify::Exclude::Backend => Some("backend"),
            crate::proxy::classify::Exclude::Credential => Some("credential"),
        };
        if verdict != Verdict::Relay {
            rec.end = Some(Instant::now());
        }
    }

    /// Write `traceparent` (the current attempt's span as the parent) and the client's
    /// `tracestate` into an upstream request head.
    pub fn inject(&self, up: &mut upstream::RequestHead) {
        let parent = self.attempts.last().map_or(self.cx.span_id, |a| a.span_id);
        up.header(
            &TRACEPARENT,
            &switchyard_otel::traceparent(self.cx.trace_id, parent),
        );
        if let Some(ts) = &self.cx.trace_state {
            up.header(&TRACESTATE, ts);
        }
    }

    fn at(&self, i: Instant) -> SystemTime {
        self.start + i.saturating_duration_since(self.t0)
    }

    /// Build the spans of a request that settled and queue them for export.
    pub fn finish(&self, fin: &Finish, outcome: Outcome, usage: Option<&Usage>) {
        let now = Instant::now();
        let end = self.at(now);
        let op = operation(&fin.endpoint);
        // The attempt whose answer went to the client: the response head names its
        // backend and credential in `fin` (only then), and of attempts on the same pair
        // the later one's answer replaced a kept one. A status alone could name another
        // attempt that answered the same status and was not relayed (a 401 that took a
        // credential out, before the error the client got).
        let answered = self.attempts.iter().rev().find(|a| {
            a.status != 0
                && !fin.backend.is_empty()
                && a.backend == fin.backend
                && a.credential == fin.credential
        });
        for (i, a) in self.attempts.iter().enumerate() {
            let mut attrs = vec![
                KeyValue::new("gen_ai.operation.name", op),
                KeyValue::new("gen_ai.provider.name", kind_name(a.kind)),
                KeyValue::new("gen_ai.request.model", a.model.to_string()),
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("switchyard.backend", a.backend.to_string()),
                KeyValue::new("switchyard.provider", a.provider.to_string()),
                KeyValue::new("switchyard.credential", a.credential.to_string()),
                KeyValue::new("switchyard.attempt", i as i64),
                KeyValue::new("switchyard.translated", a.translated),
            ];
            if let Ok(u) = url::Url::parse(&a.base_url) {
                if let Some(h) = u.host_str() {
                    attrs.push(KeyValue::new("server.address", h.to_string()));
                }
                if let Some(p) = u.port_or_known_default() {
                    attrs.push(KeyValue::new("server.port", i64::from(p)));
                }
            }
            if a.status != 0 {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(a.status)));
            }
            if let Some(t) = a.ttfb {
                attrs.push(KeyValue::new("switchyard.ttfb_seconds", t.as_secs_f64()));
            }
            if let Some(x) = a.excluded {
                attrs.push(KeyValue::new("switchyard.excluded", x));
            }
            let status = match a.error {
                Some(e) => {
                    attrs.push(KeyValue::new("error.type", e));
                    Status::error(e)
                }
                None => Status::Unset,
            };
            self.tracer.submit(Span {
                trace_id: self.cx.trace_id,
                span_id: a.span_id,
                parent_span_id: self.cx.span_id,
                parent_is_remote: false,
                kind: SpanKind::Client,
                name: format!("{op} {}", a.model).into(),
                start: self.at(a.start),
                end: a.end.map_or(end, |e| self.at(e)),
                attributes: attrs,
                status,
                trace_state: self.cx.trace_state.clone(),
            });
        }
        let provider = answered.map_or(self.dialect, |a| a.kind);
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", op),
            KeyValue::new("gen_ai.provider.name", kind_name(provider)),
            KeyValue::new("gen_ai.request.model", fin.model.to_string()),
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.path", fin.endpoint.clone()),
            KeyValue::new("http.response.status_code", i64::from(fin.status)),
            KeyValue::new("switchyard.request_id", fin.request_id.clone()),
            KeyValue::new("switchyard.key", fin.key_name.to_string()),
            KeyValue::new("switchyard.stream", fin.stream),
            KeyValue::new("switchyard.retries", i64::from(fin.retries)),
            KeyValue::new("switchyard.attempts", self.attempts.len() as i64),
            KeyValue::new("switchyard.outcome", outcome.as_str()),
        ];
        if let Some(team) = &fin.team {
            attrs.push(KeyValue::new("switchyard.team", team.to_string()));
        }
        if let Some(a) = answered {
            attrs.push(KeyValue::new("gen_ai.response.model", a.model.to_string()));
            attrs.push(KeyValue::new("switchyard.backend", a.backend.to_string()));
            attrs.push(KeyValue::new("switchyard.provider", a.provider.to_string()));
            attrs.push(KeyValue::new("switchyard.credential", a.credential.to_string()));
            if let Some(t) = a.ttfb {
                // From the request's start to the answer's head (a stream: its first event).
                let ttft = a.start.saturating_duration_since(self.t0) + t;
                attrs.push(KeyValue::new(
                    "switchyard.time_to_first_token_seconds",
                    ttft.as_secs_f64(),
                ));
            }
        }
        if let Some(u) = usage {
            attrs.push(KeyValue::new("gen_ai.usage.input_tokens", u.prompt_tokens as i64));
            attrs.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                u.completion_tokens as i64,
            ));
        }
        let failed = fin.status >= 500 || !matches!(outcome, Outcome::Ok | Outcome::ClientError);
        let status = if failed {
            let e = fin.error.unwrap_or(outcome.as_str());
            attrs.push(KeyValue::new("error.type", e));
            Status::error(e)
        } else {
            Status::Unset
        };
        self.tracer.submit(Span {
            trace_id: self.cx.trace_id,
            span_id: self.cx.span_id,
            parent_span_id: self.cx.parent.unwrap_or(0),
            parent_is_remote: self.cx.parent.is_some(),
            kind: SpanKind::Server,
            name: format!("{op} {}", fin.model).into(),
            start: self.start,
            end,
            attributes: attrs,
            status,
            trace_state: self.cx.trace_state.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use switchyard_otel::{Sampler, SpanData, Value};

    use super::*;
    use crate::proxy::{classify, route, testing, upstream_request};

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn attr(s: &SpanData, k: &str) -> Option<Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.clone())
    }

    /// One sampled request through the phases by hand: its attempts' spans, the
    /// upstream's `traceparent`, and the server span built when it settles. Not sampled,
    /// the client's `traceparent` goes upstream untouched.
    #[test]
    fn a_sampled_request_sends_its_attempt_as_parent_and_builds_its_spans() {
        let shared = testing::shared();
        let routing = testing::routing(&shared, &testing::snapshot());
        let (tracer, mut rx) = Tracer::detached(Sampler::new(true, 0.0), 16);
        let headers = [
            ("authorization", "Bearer sk-test"),
            ("traceparent", CLIENT),
            ("tracestate", "vendor=abc"),
        ];
        for sampled in [false, true] {
            let mut fin = Finish::new(shared.clone(), "r".into(), "/v1/chat/completions".into());
            let req = testing::inbound(
                &routing,
                "/v1/chat/completions",
                r#"{"model":"m","messages":[]}"#,
                &headers,
            );
            if sampled {
                fin.trace = ReqTrace::start(&tracer, &req.parts.headers, ProviderKind::OpenAi);
                assert!(fin.trace.is_some());
            }
            let mut ctx = testing::ctx(&shared, &routing, &mut fin, req);
            let t = route::next_target(&mut ctx).unwrap();
            if let Some(tr) = ctx.fin.trace.as_deref_mut() {
                tr.attempt_start(&t);
            }
            let (head, _) = upstream_request::build(&ctx, &t);
            let head = String::from_utf8(head.as_bytes().to_vec()).unwrap();
            assert_eq!(head.matches("traceparent: ").count(), 1, "{head}");
            assert!(head.contains("tracestate: vendor=abc\r\n"), "{head}");
            let Some(tr) = ctx.fin.trace.as_deref_mut() else {
                assert!(head.contains(&format!("traceparent: {CLIENT}\r\n")), "{head}");
                drop(ctx);
                fin.done(Outcome::Ok, None);
                assert!(rx.try_recv().is_err(), "not sampled: no span");
                continue;
            };
            let attempt_span = tr.attempts[0].span_id;
            assert!(
                head.contains(&format!(
                    "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-{attempt_span:016x}-01\r\n"
                )),
                "{head}"
            );
            let a = crate::proxy::attempt::Attempt::Answered(testing::answer(503, b"{}"));
            tr.attempt_end(&a, classify::classify(&a));
            let (backend, credential) = (tr.attempts[0].backend.clone(), tr.attempts[0].credential.clone());
            drop(ctx);
            fin.status = 503;
            // The kept 503 is relayed: the response head names its attempt.
            fin.backend = backend.clone();
            fin.credential = credential;
            fin.done(
                Outcome::UpstreamError,
                Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    ..Default::default()
                }),
            );
            let attempt = rx.try_recv().unwrap();
            let server = rx.try_recv().unwrap();
            assert_eq!(attempt.span_kind, SpanKind::Client);
            assert_eq!(
                u64::from_be_bytes(attempt.span_context.span_id().to_bytes()),
                attempt_span
            );
            assert_eq!(attempt.parent_span_id, server.span_context.span_id());
            assert_eq!(attr(&attempt, "error.type"), Some("server_error".into()));
            assert_eq!(attr(&attempt, "switchyard.excluded"), Some("backend".into()));
            assert_eq!(attr(&attempt, "http.response.status_code"), Some(503i64.into()));
            assert_eq!(server.span_kind, SpanKind::Server);
            assert!(server.parent_span_is_remote);
            assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
            assert_eq!(
                server.span_context.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert_eq!(server.span_context.trace_state().header(), "vendor=abc");
            assert_eq!(attr(&server, "gen_ai.operation.name"), Some("chat".into()));
            assert_eq!(attr(&server, "gen_ai.request.model"), Some("m".into()));
            assert_eq!(attr(&server, "gen_ai.usage.input_tokens"), Some(3i64.into()));
            assert_eq!(attr(&server, "gen_ai.usage.output_tokens"), Some(4i64.into()));
            assert_eq!(attr(&server, "error.type"), Some("upstream_error".into()));
            assert_eq!(
                attr(&server, "switchyard.backend"),
                Some(backend.to_string().into())
            );
            assert!(server.start_time <= attempt.start_time && attempt.end_time <= server.end_time);
            // No credential secret among the attributes (the snapshot's are `sk-k1`, `sk-k2`).
            for s in [&attempt, &server] {
                assert!(
                    !format!("{:?}", s.attributes).contains("sk-"),
                    "{:?}",
                    s.attributes
                );
            }
        }
    }

    /// An attempt whose answer was not relayed (a 401 that took its credential out) is
    /// not the server span's answer, whatever status the client got.
    #[test]
    fn an_answer_not_relayed_is_not_the_requests() {
        let shared = testing::shared();
        let routing = testing::routing(&shared, &testing::snapshot());
        let (tracer, mut rx) = Tracer::detached(Sampler::new(true, 0.0), 16);
        let headers = [("authorization", "Bearer sk-test"), ("traceparent", CLIENT)];
        let mut fin = Finish::new(shared.clone(), "r".into(), "/v1/chat/completions".into());
        let req = testing::inbound(
            &routing,
            "/v1/chat/completions",
            r#"{"model":"m","messages":[]}"#,
            &headers,
        );
        fin.trace = ReqTrace::start(&tracer, &req.parts.headers, ProviderKind::OpenAi);
        let mut ctx = testing::ctx(&shared, &routing, &mut fin, req);
        let t = route::next_target(&mut ctx).unwrap();
        let tr = ctx.fin.trace.as_deref_mut().unwrap();
        tr.attempt_start(&t);
        let a = crate::proxy::attempt::Attempt::Answered(testing::answer(401, b"{}"));
        tr.attempt_end(&a, classify::classify(&a));
        drop(ctx);
        // The request ends in an error of the same status, no answer relayed.
        fin.status = 401;
        fin.done(Outcome::UpstreamError, None);
        let attempt = rx.try_recv().unwrap();
        let server = rx.try_recv().unwrap();
        assert_eq!(attr(&attempt, "http.response.status_code"), Some(401i64.into()));
        assert_eq!(attr(&server, "switchyard.backend"), None);
        assert_eq!(attr(&server, "switchyard.credential"), None);
    }

    #[test]
    fn operations_by_path() {
        assert_eq!(operation("/v1/chat/completions"), "chat");
        assert_eq!(operation("/v1/messages"), "chat");
        assert_eq!(operation("/v1/responses"), "chat");
        assert_eq!(operation("/v1/completions"), "text_completion");
        assert_eq!(operation("/v1/embeddings"), "embeddings");
        assert_eq!(operation("/v1/messages/count_tokens"), "other");
    }
}
