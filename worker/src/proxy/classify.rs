//! Classify and record: [`classify`] says what an [`Attempt`] means ([`Verdict`]), a pure
//! function of the attempt; [`record`] is the one place that books a verdict: breaker and
//! health, metrics, which backend or credential the request excludes next, the answer
//! kept in case nothing does better, and whether to try again.
//!
//! Like pingora's `fail_to_connect` / `error_while_proxy`, a verdict knows whether a
//! retry is safe: every verdict but `Relay` comes before any byte reached the client.
use tracing::warn;

use crate::{account::HealthTarget, errors::ProxyError, health};

use super::{
    attempt::{Answer, Attempt},
    route::Target,
    Ctx,
};

/// What an attempt means for the request and for the backend and credential it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Relay the answer: a success, or a status that another backend would not mend
    /// (400, 404, 422…). The backend and credential answered: a success for both.
    Relay,
    /// Nothing in time (head, or an SSE answer's first event): a long request or a dead
    /// backend; the backend's breaker hears of it only if it answered nothing else.
    Timeout,
    /// No connection (`connect`), or it failed before a head: the backend's failure.
    Unreachable { connect: bool },
    /// A 2xx stream broke before its first event: the backend's failure.
    StreamBroke,
    /// 401/403: the upstream refused the credential (perhaps provoked by the request:
    /// confirmed by a probe before it is ejected). Another credential may do.
    CredentialRejected,
    /// 429: the credential is rate-limited (load, not sickness): cooled down; the answer
    /// is kept; another credential may do.
    RateLimited,
    /// 500/502/503/504: the backend's failure; the answer is kept; another backend may do.
    ServerError,
}

impl Verdict {
    /// What the request excludes from its next picks.
    pub fn excludes(self) -> Exclude {
        match self {
            Self::Relay => Exclude::Nothing,
            Self::CredentialRejected | Self::RateLimited => Exclude::Credential,
            Self::Timeout | Self::Unreachable { .. } | Self::StreamBroke | Self::ServerError => {
                Exclude::Backend
            }
        }
    }

    /// The answer is kept, to pass on if no other attempt does better.
    pub fn keeps_answer(self) -> bool {
        matches!(self, Self::RateLimited | Self::ServerError)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclude {
    Nothing,
    Backend,
    Credential,
}

/// What the attempt means (pure: no bookkeeping).
pub fn classify(a: &Attempt) -> Verdict {
    match a {
        Attempt::HeadTimeout | Attempt::FirstEventTimeout => Verdict::Timeout,
        Attempt::SendFailed(e) => Verdict::Unreachable {
            connect: e.is_connect(),
        },
        Attempt::StreamFailed(_) => Verdict::StreamBroke,
        Attempt::Answered(a) => match a.status() {
            401 | 403 => Verdict::CredentialRejected,
            429 => Verdict::RateLimited,
            500 | 502 | 503 | 504 => Verdict::ServerError,
            _ => Verdict::Relay,
        },
    }
}

/// A retryable upstream answer kept in case no other backend does better.
#[derive(Debug)]
pub struct Kept {
    pub answer: Answer,
    /// Index into the route's backends.
    pub bi: usize,
    /// Index into the provider's credentials.
    pub ci: usize,
}

/// What the request's attempts so far left behind.
#[derive(Debug, Default)]
pub struct Tries {
    /// Backends (route indices) not to pick again.
    pub excluded_b: Vec<usize>,
    /// Credentials (provider index, credential index) not to pick again.
    pub excluded_c: Vec<(usize, usize)>,
    pub attempts: u32,
    pub last_err: Option<ProxyError>,
    pub kept: Option<Kept>,
    /// An upstream 401/403 was seen: it may have been provoked by the request itself, so
    /// it sends at most one confirmation probe, and a second one ends the tries.
    pub creds_rejected: bool,
}

/// After recording a verdict: what the request does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try another target.
    Try,
    /// No more tries: answer with what was kept or the last error.
    Stop,
    /// Relay the attempt's answer.
    Relay,
}

/// Book `verdict` for the attempt at `t`: the one place for breaker and health
/// transitions, metrics, exclusions, the kept answer and the retry decision. The attempt
/// is borrowed, not moved: an answer holds its connection inline, and every move of it is
/// a copy on the request path (a kept answer is taken out of it).
pub fn record(ctx: &mut Ctx<'_>, t: &Target<'_>, attempt: &mut Attempt, verdict: Verdict) -> Next {
    let shared = ctx.shared;
    let model = ctx.plan.model;
    let (backend, provider, cred, now) = (t.backend, t.provider, t.cred, t.now);
    let backend_target = || HealthTarget::backend(&model.name, &backend.name, &provider.name);
    let upstream_error = |kind: &str| {
        shared
            .metrics
            .upstream_errors
            .get_or_create(&vec![("kind", kind.into())])
            .inc();
    };
    match verdict.excludes() {
        Exclude::Nothing => {}
        Exclude::Backend => ctx.tries.excluded_b.push(t.bi),
        Exclude::Credential => ctx.tries.excluded_c.push((backend.provider, t.ci)),
    }
    match verdict {
        Verdict::Relay => {
            let Attempt::Answered(answer) = &*attempt else {
                return Next::Stop;
            };
            let ttfb_us = answer.ttfb.as_micros() as u64;
            shared.transition(backend.state.record_success(now, ttfb_us), backend_target);
            shared.transition(cred.state.record_success(now, ttfb_us), || {
                HealthTarget::credential(&provider.name, &cred.name)
            });
            ctx.fin.ttfb = Some(answer.ttfb);
            return Next::Relay;
        }
        Verdict::Timeout => {
            // A timeout while the backend answers other requests is a long request, not a
            // dead upstream; otherwise a probe tells the two apart before the breaker
            // hears of it.
            let header_timeout_ms = t.header_timeout.as_millis().min(u128::from(u64::MAX)) as u64;
            if !backend
                .state
                .answered_since(now.saturating_sub(header_timeout_ms))
            {
                if backend.state.consecutive_failures() > 0 {
                    // Already failing (a probe or another failure said so): no need to ask.
                    shared.transition(backend.state.record_failure(now, "timeout"), backend_target);
                } else {
                    health::confirm_timeout(
                        shared,
                        ctx.routing,
                        &backend.state,
                        backend_target,
                        backend.provider,
                        t.ci,
                    );
                }
            }
            // FIXME: a stream's first event that times out is not counted in
            // `upstream_errors` (as before the phases were named); only a head is.
            if matches!(attempt, Attempt::HeadTimeout) {
                upstream_error("timeout");
            }
            ctx.tries.last_err = Some(ProxyError::Timeout);
        }
        Verdict::Unreachable { connect } => {
            let label = if connect { "connect" } else { "upstream" };
            if let Attempt::SendFailed(e) = &*attempt {
                // The detail (addresses, backend names) is the operator's: logged, not sent.
                warn!(request_id = %ctx.fin.request_id, backend = %backend.name, error = %e, "upstream attempt failed");
            }
            shared.transition(backend.state.record_failure(now, label), backend_target);
            upstream_error(label);
            ctx.tries.last_err = Some(ProxyError::Connect);
        }
        Verdict::StreamBroke => {
            shared.transition(backend.state.record_failure(now, "stream failed"), backend_target);
            if let Attempt::StreamFailed(e) = &*attempt {
                warn!(request_id = %ctx.fin.request_id, backend = %backend.name, error = %e,
                    "upstream stream failed before its first event");
            }
            ctx.tries.last_err = Some(ProxyError::Upstream("the stream failed before its first event"));
        }
        Verdict::CredentialRejected => {
            let status = status_of(attempt);
            upstream_error("auth");
            warn!(request_id = %ctx.fin.request_id, provider = %provider.name, credential = %cred.name,
                status, "upstream rejected the credential");
            ctx.tries.last_err = Some(ProxyError::CredentialRejected);
            if ctx.tries.creds_rejected {
                return Next::Stop;
            }
            ctx.tries.creds_rejected = true;
            health::confirm_credential(shared, ctx.routing, backend.provider, t.ci, status);
        }
        Verdict::RateLimited => {
            if let Attempt::Answered(a) = &*attempt {
                let cap_ms = shared.retry_after_cap.as_millis().min(u128::from(u64::MAX)) as u64;
                if let Some(ms) = retry_after_ms(&a.head.headers, cap_ms) {
                    cred.state.cool_down(now.saturating_add(ms));
                }
            }
            upstream_error("429");
        }
        Verdict::ServerError => {
            let status = status_of(attempt);
            shared.transition(
                backend.state.record_failure(now, &format!("upstream {status}")),
                backend_target,
            );
            upstream_error("5xx");
        }
    }
    if verdict.keeps_answer() {
        if let Attempt::Answered(answer) = std::mem::replace(attempt, Attempt::HeadTimeout) {
            ctx.tries.kept = Some(Kept {
                answer,
                bi: t.bi,
                ci: t.ci,
            });
        }
    }
    Next::Try
}

fn status_of(a: &Attempt) -> u16 {
    match a {
        Attempt::Answered(a) => a.status(),
        _ => 0,
    }
}

/// Milliseconds from a `Retry-After` header (delta-seconds form only), at most `cap_ms`:
/// an upstream cannot cool a credential down for years, and `1e30` cannot overflow a
/// deadline.
pub fn retry_after_ms(h: &http::HeaderMap, cap_ms: u64) -> Option<u64> {
    let v = h.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| ((s * 1000.0) as u64).min(cap_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderMap, HeaderValue};

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

    #[test]
    fn every_attempt_has_one_verdict() {
        use super::super::testing::answer;
        use crate::upstream::Error;
        assert_eq!(classify(&Attempt::HeadTimeout), Verdict::Timeout);
        assert_eq!(classify(&Attempt::FirstEventTimeout), Verdict::Timeout);
        assert_eq!(
            classify(&Attempt::SendFailed(Error::ConnectTimeout("x".into()))),
            Verdict::Unreachable { connect: true }
        );
        assert_eq!(
            classify(&Attempt::SendFailed(Error::UnexpectedEof)),
            Verdict::Unreachable { connect: false }
        );
        assert_eq!(
            classify(&Attempt::StreamFailed(Error::UnexpectedEof)),
            Verdict::StreamBroke
        );
        for (status, v) in [
            (200, Verdict::Relay),
            (201, Verdict::Relay),
            (400, Verdict::Relay),
            (404, Verdict::Relay),
            (422, Verdict::Relay),
            (401, Verdict::CredentialRejected),
            (403, Verdict::CredentialRejected),
            (429, Verdict::RateLimited),
            (500, Verdict::ServerError),
            (502, Verdict::ServerError),
            (503, Verdict::ServerError),
            (504, Verdict::ServerError),
            (501, Verdict::Relay),
            (505, Verdict::Relay),
        ] {
            assert_eq!(classify(&Attempt::Answered(answer(status, b"{}"))), v, "{status}");
        }
    }

    #[test]
    fn a_verdict_excludes_what_failed_and_keeps_complete_answers() {
        use Verdict::*;
        let all = [
            Relay,
            Timeout,
            Unreachable { connect: true },
            Unreachable { connect: false },
            StreamBroke,
            CredentialRejected,
            RateLimited,
            ServerError,
        ];
        for v in all {
            let want = match v {
                Relay => Exclude::Nothing,
                CredentialRejected | RateLimited => Exclude::Credential,
                _ => Exclude::Backend,
            };
            assert_eq!(v.excludes(), want, "{v:?}");
            // Only a complete answer is kept, and only a retryable one.
            assert_eq!(v.keeps_answer(), matches!(v, RateLimited | ServerError), "{v:?}");
        }
    }
}
