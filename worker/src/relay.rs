//! Relaying the upstream response body to the client frame by frame, as it arrives
//! (never buffered), while watching it: idle and total timeouts, a dialect error event
//! when a stream breaks after its first byte, usage counting, and the end-of-request
//! log line, metrics and usage event (written when the stream ends or is dropped).
//!
//! Every request settles exactly once: `Finish` counts it in flight from its creation
//! and, if dropped unsettled (the client hung up while the worker waited for the
//! upstream), books it as `client_aborted` with status 499. A relayed body dropped before
//! its end (the client hung up, or stopped reading for `--send-timeout`) is booked as
//! `client_aborted` too, after a bounded drain of the upstream's rest for its usage
//! (`AbortDrain`).
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use tokio::time::Sleep;

use crate::{
    account::{cost_of, Outcome, Price, Usage, UsageEvent, UsageScanner},
    balance::{EndpointState, InflightGuard},
    body::BoxError,
    errors::{Dialect, ProxyError},
    metrics::{BackendHandles, Metrics, ModelHandles},
    Shared,
};

/// Everything needed to log and account a request once it ends. Names are shared
/// `Arc<str>`s from the routing table: building one costs reference counts, not copies.
#[derive(Debug)]
pub struct Finish {
    pub shared: Arc<Shared>,
    pub request_id: String,
    pub key_id: Arc<str>,
    pub key_name: Arc<str>,
    /// The key's team (`None`: none).
    pub team: Option<Arc<str>>,
    pub model: Arc<str>,
    pub backend: Arc<str>,
    pub provider: Arc<str>,
    pub credential: Arc<str>,
    pub endpoint: String,
    /// Metric handles, once the model (and backend) are known.
    pub model_metrics: Option<Arc<ModelHandles>>,
    pub backend_metrics: Option<Arc<BackendHandles>>,
    /// The backend's price in the request's snapshot (`None`: unpriced, or no backend).
    pub price: Option<Price>,
    pub stream: bool,
    pub retries: u32,
    pub status: u16,
    pub start: Instant,
    pub ttfb: Option<Duration>,
    pub error: Option<&'static str>,
    /// The limits' reservations (`limits::Held`; empty without limits).
    pub limits: crate::limits::Held,
    /// The request's trace, if it is sampled (`trace`; `None` costs nothing).
    pub trace: Option<Box<crate::trace::ReqTrace>>,
    /// Booked (or handed over): nothing left for `Drop` to do.
    settled: bool,
}

/// The empty name, shared (an `Arc<str>` of "" would otherwise allocate per request).
pub fn empty_name() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

impl Finish {
    /// Counts the request in flight until it is settled (`done`, or `Drop`).
    pub fn new(shared: Arc<Shared>, request_id: String, endpoint: String) -> Self {
        shared.metrics.inflight.inc();
        let e = empty_name();
        Self {
            shared,
            request_id,
            key_id: e.clone(),
            key_name: e.clone(),
            team: None,
            model: e.clone(),
            backend: e.clone(),
            provider: e.clone(),
            credential: e,
            endpoint,
            model_metrics: None,
            backend_metrics: None,
            price: None,
            stream: false,
            retries: 0,
            status: 0,
            start: Instant::now(),
            ttfb: None,
            error: None,
            limits: crate::limits::Held::default(),
            trace: None,
            settled: false,
        }
    }

    /// The request's bookkeeping, moved into a new `Finish` (for the relayed body), which
    /// now owns the in-flight count; `self` is left settled and books nothing.
    pub fn hand_over(&mut self) -> Finish {
        self.settled = true;
        Finish {
            shared: self.shared.clone(),
            request_id: std::mem::take(&mut self.request_id),
            key_id: self.key_id.clone(),
            key_name: self.key_name.clone(),
            team: self.team.take(),
            model: self.model.clone(),
            backend: self.backend.clone(),
            provider: self.provider.clone(),
            credential: self.credential.clone(),
            endpoint: std::mem::take(&mut self.endpoint),
            model_metrics: self.model_metrics.take(),
            backend_metrics: self.backend_metrics.take(),
            price: self.price,
            stream: self.stream,
            retries: self.retries,
            status: self.status,
            start: self.start,
            ttfb: self.ttfb,
            error: self.error,
            limits: self.limits.hand_over(),
            trace: self.trace.take(),
            settled: false,
        }
    }

    /// Books the request: metrics, access line, usage event.
    pub fn done(mut self, outcome: Outcome, usage: Option<Usage>) {
        self.settle(outcome, usage);
    }

    fn settle(&mut self, outcome: Outcome, usage: Option<Usage>) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        // One wall-clock read for the limits, the access line and the usage record.
        let wall = std::time::SystemTime::now();
        let ts_ms = wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.limits.settle_at(usage.as_ref(), self.price.as_ref(), ts_ms);
        let latency = self.start.elapsed();
        let m = &self.shared.metrics;
        m.inflight.dec();
        match &self.backend_metrics {
            Some(h) => {
                h.requests(m, self.status).inc();
            }
            None => {
                m.requests_series(&self.model, &self.backend, Metrics::status_class(self.status))
                    .inc();
            }
        }
        if let Some(h) = &self.model_metrics {
            let s = h.get(m);
            s.duration.observe(latency.as_secs_f64());
            if let Some(t) = self.ttfb {
                s.ttfb.observe(t.as_secs_f64());
            }
            if self.retries > 0 {
                s.retries.inc_by(u64::from(self.retries));
            }
            if let Some(u) = &usage {
                if u.prompt_tokens > 0 {
                    s.prompt_tokens.inc_by(u.prompt_tokens);
                }
                if u.completion_tokens > 0 {
                    s.completion_tokens.inc_by(u.completion_tokens);
                }
            }
        }
        if let Some(log) = &self.shared.access_log {
            if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
                LINE.with_borrow_mut(|l| {
                    l.clear();
                    self.access_line(l, wall, latency, outcome);
                    log.write(l);
                });
            }
        }
        if let Some(t) = self.trace.take() {
            t.finish(self, outcome, usage.as_ref());
        }
        if let Some(sink) = &self.shared.usage_sink {
            sink.record(UsageEvent {
                ts_ms,
                request_id: std::mem::take(&mut self.request_id),
                key_id: self.key_id.clone(),
                key_name: self.key_name.clone(),
                team: self.team.take(),
                model: self.model.clone(),
                backend: self.backend.clone(),
                provider: self.provider.clone(),
                credential: self.credential.clone(),
                endpoint: std::mem::take(&mut self.endpoint),
                status: self.status,
                stream: self.stream,
                retries: self.retries,
                latency_us: latency.as_micros() as u64,
                ttfb_us: self.ttfb.map_or(0, |t| t.as_micros() as u64),
                usage: usage.unwrap_or_default(),
                cost_nano: cost_of(self.price.as_ref(), &usage.unwrap_or_default()),
                outcome,
            });
        }
    }

    /// The access log line, in the shape of the other log lines (`<time>  INFO <target>:
    /// request done key=value ...`), formatted by hand into a reused buffer: the log
    /// subscriber's generic field machinery cost more than proxying the request. Values
    /// that are not plain tokens are quoted and escaped, so a client-chosen request id
    /// cannot forge fields or lines.
    fn access_line(&self, l: &mut Vec<u8>, now: std::time::SystemTime, latency: Duration, outcome: Outcome) {
        timestamp(l, now);
        l.extend_from_slice(b"  INFO ");
        l.extend_from_slice(ACCESS_TARGET.as_bytes());
        l.extend_from_slice(b": request done");
        kv(l, "request_id", &self.request_id);
        kv(l, "model", &self.model);
        kv(l, "backend", &self.backend);
        kv(l, "provider", &self.provider);
        num(l, " status=", u64::from(self.status));
        num(l, " latency_us=", latency.as_micros() as u64);
        if let Some(t) = self.ttfb {
            num(l, " ttfb_us=", t.as_micros() as u64);
        }
        num(l, " retries=", u64::from(self.retries));
        l.extend_from_slice(if self.stream {
            b" stream=true"
        } else {
            b" stream=false"
        });
        l.extend_from_slice(b" outcome=");
        l.extend_from_slice(outcome.as_str().as_bytes());
        if let Some(e) = self.error {
            kv(l, "error", e);
        }
        l.push(b'\n');
    }
}

impl Drop for Finish {
    /// Unsettled at its end: the request's future was dropped before an answer went out,
    /// which hyper does when the client hangs up. Booked with what is known, as nginx
    /// logs such a request: 499.
    fn drop(&mut self) {
        if !self.settled {
            if self.status == 0 {
                self.status = STATUS_CLIENT_CLOSED;
            }
            self.settle(Outcome::ClientAborted, None);
        }
    }
}

/// nginx's "client closed request", for a request whose client left before its answer.
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// The log target of the per-request line (`RUST_LOG=switchyard::access=off` silences it).
pub const ACCESS_TARGET: &str = "switchyard::access";

thread_local! {
    /// The access line being formatted (one per thread, reused).
    static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
    /// `YYYY-MM-DDTHH:MM:SS` of the last second a line was stamped with.
    static STAMP: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 UTC with microseconds (`2026-12-01T16:04:30.123456Z`). The date and time of
/// day are formatted once a second.
fn timestamp(l: &mut Vec<u8>, now: std::time::SystemTime) {
    let d = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut prefix) = STAMP.get();
    if cached != secs {
        let full =
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        prefix.copy_from_slice(&full.as_bytes()[..19]);
        STAMP.set((secs, prefix));
    }
    l.extend_from_slice(&prefix);
    let mut frac = *b".000000Z";
    let mut m = d.subsec_micros();
    for i in (1..7).rev() {
        frac[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    l.extend_from_slice(&frac);
}

fn num(l: &mut Vec<u8>, key: &str, v: u64) {
    l.extend_from_slice(key.as_bytes());
    l.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn kv(l: &mut Vec<u8>, k: &str, v: &str) {
    l.push(b' ');
    l.extend_from_slice(k.as_bytes());
    l.push(b'=');
    let plain = !v.is_empty() && crate::bytescan::plain_token(v.as_bytes());
    if plain {
        l.extend_from_slice(v.as_bytes());
    } else {
        use std::io::Write as _;
        let _ = write!(l, "{v:?}");
    }
}

/// How much of an upstream answer the worker still reads, for its usage, after the client
/// went away mid-body (`--abort-drain`, `--abort-drain-bytes`). The upstream bills for
/// the whole answer; reading on (in a task tracked by `Shared::drains`) books the tokens
/// it reports at the end. Either limit at zero turns the drain off: what was seen is booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortDrain {
    pub time: Duration,
    pub bytes: usize,
}

impl Default for AbortDrain {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(10),
            bytes: 1024 * 1024,
        }
    }
}

impl AbortDrain {
    fn enabled(&self) -> bool {
        !self.time.is_zero() && self.bytes > 0
    }
}

#[derive(Debug)]
pub struct RelayBody {
    first: Option<Bytes>,
    /// `None` only once `Drop` gave it to the abort drain.
    inner: Option<crate::upstream::Body>,
    sse: bool,
    dialect: Dialect,
    idle: Duration,
    last_chunk: Instant,
    /// Armed at the first wait for the upstream: a body that is there at once (most
    /// non-streaming answers) never needs a timer.
    idle_sleep: Option<Pin<Box<Sleep>>>,
    total: Option<Pin<Box<Sleep>>>,
    ended: bool,
    scanner: UsageScanner,
    finish: Option<Finish>,
    outcome: Outcome,
    backend_state: Option<Arc<EndpointState>>,
    /// What the client sees of the upstream's bytes (`None`: those bytes).
    transform: Option<Transform>,
    /// The backend's and credential's in-flight counts (moved to the abort drain, if any).
    guards: Option<[Option<InflightGuard>; 2]>,
}

/// Everything the body phase needs to relay one answer (the response head phase fills
/// it in: `proxy::respond`).
#[derive(Debug)]
pub struct RelaySpec {
    /// The first event of an SSE answer, already read (sent before `inner`'s rest).
    pub first: Option<Bytes>,
    pub inner: crate::upstream::Body,
    pub sse: bool,
    /// A 2xx answer: usage is read, and an end counts as `ok`.
    pub success: bool,
    pub dialect: Dialect,
    pub idle: Duration,
    pub total: Option<tokio::time::Instant>,
    /// What the client sees of the upstream's bytes, if not those bytes.
    pub transform: Option<Transform>,
    /// The backend a broken stream is a failure of (none for the Responses API's
    /// stateful calls, which have no backend).
    pub backend_state: Option<Arc<EndpointState>>,
    /// The backend's and credential's in-flight counts.
    pub guards: [Option<InflightGuard>; 2],
    pub finish: Finish,
}

/// The body phase's stream transform: what the client sees of the upstream's bytes.
/// Usage is always read from the upstream's own bytes, before the transform. An enum,
/// not a `Box<dyn>`: the relay pays no allocation or indirect call for it.
///
/// Stream translation (OpenAI ⇄ Anthropic) plugs in here as another variant.
#[derive(Debug)]
pub enum Transform {
    /// The worker added `include_usage` upstream: remove its traces (complete events go
    /// out at once; an incomplete trailing one is held back).
    StripUsage(crate::strip::Stripper),
    /// The Responses API: the upstream's response ids go out as gateway ids (`respid`).
    ResponseIds(crate::respid::Rewriter),
    /// A backend of the other kind than the client's dialect: its answer translated
    /// (`proxy::translate`); its usage is the translator's. Boxed: translated requests
    /// only, and a trait object inside.
    Translate(Box<crate::proxy::translate::AnswerTranslator>),
}

impl Transform {
    pub fn strip_usage() -> Self {
        Self::StripUsage(crate::strip::Stripper::new())
    }

    /// What the client gets of the next upstream chunk (possibly nothing yet).
    fn feed(&mut self, b: Bytes) -> Bytes {
        match self {
            Self::StripUsage(s) => s.feed(b),
            Self::ResponseIds(r) => r.feed(b),
            Self::Translate(t) => t.feed(b),
        }
    }

    /// The upstream's stream ended: what was held back.
    fn finish(&mut self) -> Option<Bytes> {
        match self {
            Self::StripUsage(s) => s.finish(),
            Self::ResponseIds(r) => r.finish(),
            Self::Translate(t) => t.finish(),
        }
    }

    /// Nothing is held back.
    fn is_empty(&self) -> bool {
        match self {
            Self::StripUsage(s) => s.is_empty(),
            Self::ResponseIds(r) => r.is_empty(),
            Self::Translate(t) => t.is_empty(),
        }
    }

    /// The usage to book instead of the one read from the upstream's bytes.
    fn usage(&self) -> Option<Usage> {
        match self {
            Self::Translate(t) => t.usage(),
            _ => None,
        }
    }
}

impl RelayBody {
    /// The body, boxed (as `ProxyBody::Relay` holds it): built in its box rather than
    /// moved into one, since every move of it is a copy.
    pub fn new(spec: RelaySpec) -> Box<Self> {
        // Fields are moved from `spec` straight into the body (no destructuring into
        // locals): `inner` holds its connection inline, and every move is a copy.
        let mut scanner = UsageScanner::new(spec.sse, spec.success);
        if let Some(f) = &spec.first {
            scanner.observe(f);
        }
        let outcome = if spec.success {
            Outcome::Ok
        } else {
            Outcome::ClientError
        };
        // Allocated first and written into: `Box::new(value)` built it on the stack and
        // copied it.
        Box::write(
            Box::new_uninit(),
            Self {
                first: spec.first,
                inner: Some(spec.inner),
                sse: spec.sse,
                dialect: spec.dialect,
                idle: spec.idle,
                last_chunk: Instant::now(),
                idle_sleep: None,
                total: spec.total.map(|d| Box::pin(tokio::time::sleep_until(d))),
                ended: false,
                scanner,
                finish: Some(spec.finish),
                outcome,
                backend_state: spec.backend_state,
                transform: spec.transform,
                guards: Some(spec.guards),
            },
        )
    }

    fn end(&mut self, outcome: Option<Outcome>) {
        self.ended = true;
        if let Some(o) = outcome {
            self.outcome = o;
        }
        if let Some(f) = self.finish.as_mut() {
            let usage = match self.transform.as_ref().and_then(Transform::usage) {
                Some(u) => Some(u),
                None => self.scanner.finish(outcome.is_none()),
            };
            // Booked where it lies: moving a `Finish` out to book it is a copy.
            f.settle(self.outcome, usage);
            self.finish = None;
        }
    }

    /// The frame about to go out is the last (the upstream's body ended with it, and
    /// the transform holds nothing back): book the request now, so that its usage
    /// record is journaled before hyper writes the end of the response (hyper ends it
    /// with this frame when `is_end_stream` says so, and drops the body after). The
    /// usage is what `Drop` would book a moment later: nothing more can arrive.
    fn settle_if_last(&mut self) {
        if self.finish.is_some()
            && self.inner.as_ref().is_some_and(|b| b.is_end_stream())
            && self.transform.as_ref().is_none_or(Transform::is_empty)
        {
            self.end(None);
        }
    }

    fn client_view(&mut self, b: Bytes) -> Bytes {
        match self.transform.as_mut() {
            Some(t) => t.feed(b),
            None => b,
        }
    }

    /// The stream broke after bytes went out: emit the dialect error event (SSE) or
    /// abort the body (plain JSON, so the client sees a truncated response).
    fn fail(&mut self, err: ProxyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let now = self.finish.as_ref().map_or(0, |f| f.shared.clock.now_ms());
        if let Some(f) = self.finish.as_mut() {
            f.error = Some(err.label());
            f.shared
                .metrics
                .upstream_errors
                .get_or_create(&vec![("kind", format!("stream_{}", err.label()))])
                .inc();
        }
        if let Some(s) = &self.backend_state {
            s.record_failure(now, "stream broken");
        }
        self.end(Some(Outcome::StreamError));
        if self.sse {
            Poll::Ready(Some(Ok(Frame::data(err.stream_event(self.dialect)))))
        } else {
            Poll::Ready(Some(Err(Box::new(err))))
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(b) = this.first.take() {
            let b = this.client_view(b);
            this.settle_if_last();
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(d) => {
                        this.scanner.observe(&d);
                        this.last_chunk = Instant::now();
                        let d = this.client_view(d);
                        this.settle_if_last();
                        Frame::data(d)
                    }
                    Err(f) => f,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream stream interrupted");
                this.fail(ProxyError::Upstream("stream interrupted"))
            }
            Poll::Ready(None) => {
                // What the transform held back (an event the upstream did not end goes
                // out as it came; a translation's last events), before the request is
                // booked with the transform's usage.
                let rest = this.transform.as_mut().and_then(Transform::finish);
                this.end(None);
                match rest {
                    Some(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
                    None => Poll::Ready(None),
                }
            }
            Poll::Pending => {
                if let Some(t) = this.total.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        return this.fail(ProxyError::Timeout);
                    }
                }
                // Lazily re-arm the idle timer: chunks only note their time, and the
                // timer is reset when it fires early.
                let idle = this.idle;
                let last = this.last_chunk;
                let sleep = this
                    .idle_sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until((last + idle).into())));
                loop {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let due = this.last_chunk + this.idle;
                    if Instant::now() >= due {
                        return this.fail(ProxyError::Timeout);
                    }
                    sleep.as_mut().reset(tokio::time::Instant::from_std(due));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none()
            && (self.ended || self.inner.as_ref().is_none_or(|b| b.is_end_stream()))
            && self.transform.as_ref().is_none_or(Transform::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse || self.transform.is_some() {
            // An error event may be appended, or the transform changes the length: never
            // promise an exact length.
            return SizeHint::default();
        }
        let mut h = self
            .inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
        if let Some(f) = &self.first {
            let n = f.len() as u64;
            h.set_lower(h.lower() + n);
            if let Some(u) = h.upper() {
                h.set_upper(u + n);
            }
        }
        h
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        let Some(f) = self.finish.as_ref() else {
            return;
        };
        // hyper stops polling once a body with a known length is complete, so a fully
        // relayed body can be dropped without a final `None`.
        let rest = match self.inner.take() {
            Some(b) if self.first.is_none() && b.is_end_stream() => {
                self.inner = Some(b);
                self.end(None);
                return;
            }
            Some(b) => b,
            None => {
                self.end(Some(Outcome::ClientAborted));
                return;
            }
        };
        // The client went away before the end.
        let drain = f.shared.abort_drain;
        let runtime = tokio::runtime::Handle::try_current();
        let (Ok(rt), true, false) = (
            runtime,
            drain.enabled(),
            matches!(self.scanner, UsageScanner::Off),
        ) else {
            // Nothing to drain for (no usage to find), or no drain: book what was seen.
            drop(rest);
            self.end(Some(Outcome::ClientAborted));
            return;
        };
        let Some(finish) = self.finish.take() else {
            return;
        };
        self.ended = true;
        if let Some(b) = self.first.take() {
            // Counted by the scanner already; never sent.
            drop(b);
        }
        let mut scanner = std::mem::replace(&mut self.scanner, UsageScanner::Off);
        let guards = self.guards.take();
        let shared = finish.shared.clone();
        let stop = shared.drain_stop.clone();
        shared.drains.spawn_on(
            async move {
                let _guards = guards;
                let complete = drain_rest(rest, &mut scanner, drain, &stop).await;
                finish.done(Outcome::ClientAborted, scanner.finish(complete));
            },
            &rt,
        );
    }
}

/// Reads what is left of an upstream answer into `scanner`, within `limit`'s time and
/// bytes, until `stop`; `true` when the answer was read to its end. Dropping the body
/// then closes the connection, or returns it to its pool when read whole.
async fn drain_rest(
    mut rest: crate::upstream::Body,
    scanner: &mut UsageScanner,
    limit: AbortDrain,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    use http_body_util::BodyExt as _;
    let deadline = tokio::time::sleep(limit.time.min(Duration::from_secs(365 * 86_400)));
    tokio::pin!(deadline);
    let mut read = 0usize;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return false,
            () = &mut deadline => return false,
            f = rest.frame() => match f {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    if let Ok(d) = frame.into_data() {
                        read += d.len();
                        scanner.observe(&d);
                        if read >= limit.bytes {
                            return rest.is_end_stream();
                        }
                    }
                }
            },
        }
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_matches_rfc3339_micros_across_seconds() {
        for t in [
            0u64,
            1_796_140_827_123_456,
            1_796_140_827_999_999,
            1_796_140_828_000_001,
        ] {
            let now = std::time::UNIX_EPOCH + Duration::from_micros(t);
            let mut l = Vec::new();
            timestamp(&mut l, now);
            assert_eq!(
                String::from_utf8(l).unwrap(),
                humantime::format_rfc3339_micros(now).to_string()
            );
        }
    }

    #[test]
    fn values_that_are_not_plain_tokens_are_quoted() {
        let mut l = Vec::new();
        kv(&mut l, "request_id", "abc-123");
        kv(&mut l, "request_id", "x status=500\nforged line");
        kv(&mut l, "model", "");
        assert_eq!(
            String::from_utf8(l).unwrap(),
            r#" request_id=abc-123 request_id="x status=500\nforged line" model="""#
        );
    }
}
