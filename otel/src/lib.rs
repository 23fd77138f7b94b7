//! Traces for control and the worker: OTLP export (gRPC or HTTP/protobuf) off the request
//! path, configured by the standard `OTEL_*` environment variables, W3C trace context
//! (`traceparent`, `tracestate`) and the sampling decision.
//!
//! Spans are built after the fact: a request decides once, at its start, whether it is
//! sampled ([`Tracer::start_server`]); a sampled one records what it measures anyway
//! (start, attempts, time to first byte, usage) and, where it settles, hands finished
//! [`Span`]s to [`Tracer::submit`]. That pushes them into a bounded queue (a full queue
//! drops the span and counts it) that one export task empties on a timer, sending batches
//! with the `opentelemetry-otlp` exporter under a deadline. A dead or slow collector never slows a
//! request: it only drops spans, counted in `/metrics`
//! (`*_trace_spans_dropped_total`, next to `*_trace_spans_exported_total`).
//!
//! No `tracing` span and no SDK `Tracer` is created per request: the SDK's tracer would
//! allocate and take its sampling path for every request, sampled or not, while a request
//! that is not sampled here costs one branch on an `Option`.
pub mod grpc;

use std::{
    borrow::Cow,
    str::FromStr,
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState},
    InstrumentationScope,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{SpanEvents, SpanExporter as _, SpanLinks};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use opentelemetry::{
    trace::{SpanKind, Status},
    KeyValue, Value,
};
pub use opentelemetry_sdk::trace::SpanData;

/// A bad `OTEL_*` setting, or an exporter that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name}: {msg}")]
    Env { name: &'static str, msg: String },
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    /// The specification's default.
    HttpProtobuf,
}

/// Which requests are traced (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
/// Parent-based: a request with a valid `traceparent` follows its sampled flag; the
/// others (all requests, if not parent-based) are sampled by trace id with the ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    pub parent_based: bool,
    /// Sampled when the trace id's low 63 bits are below this (the SDK's
    /// `TraceIdRatioBased`); `u64::MAX`: always.
    threshold: u64,
}

impl Sampler {
    pub fn new(parent_based: bool, ratio: f64) -> Self {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else if ratio > 0.0 {
            (ratio * (1u64 << 63) as f64) as u64
        } else {
            0
        };
        Self {
            parent_based,
            threshold,
        }
    }

    /// The decision for a trace id, given the client's parent if any.
    pub fn sample(&self, trace_id: u128, parent: Option<&Parent>) -> bool {
        match parent {
            Some(p) if self.parent_based => p.sampled,
            _ => self.threshold == u64::MAX || ((trace_id as u64) >> 1) < self.threshold,
        }
    }
}

/// Everything the `OTEL_*` variables say about traces.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub protocol: Protocol,
    pub sampler: Sampler,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting for export (default 2048); beyond, dropped.
    pub max_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512).
    pub max_batch: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY`: how long a batch waits to fill (default 5 s).
    pub delay: Duration,
    /// `OTEL_BSP_EXPORT_TIMEOUT`: the longest one export may take (default 30 s).
    pub export_timeout: Duration,
}

fn env_num<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, Error> {
    match get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| Error::Env {
            name,
            msg: format!("not a number: {v:?}"),
        }),
    }
}

impl Settings {
    /// From the process environment; `Ok(None)`: tracing is off.
    pub fn from_env() -> Result<Option<Self>, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Tracing is on when a traces endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_ENDPOINT`), unless `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`. Values that do not parse are errors, not defaults.
    /// (Endpoint, headers, timeout and compression are read by the exporter itself.)
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Error> {
        let set = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(Error::Env {
                    name: "OTEL_TRACES_EXPORTER",
                    msg: format!("{other:?} is not supported (otlp or none)"),
                })
            }
        }
        if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        let (pname, proto) = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(p)),
            None => ("OTEL_EXPORTER_OTLP_PROTOCOL", set("OTEL_EXPORTER_OTLP_PROTOCOL")),
        };
        let protocol = match proto.as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(Error::Env {
                    name: pname,
                    msg: format!("{other:?} is not supported (grpc or http/protobuf)"),
                })
            }
        };
        let endpoint =
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if protocol == Protocol::Grpc && endpoint.is_some_and(|e| e.starts_with("https:")) {
            return Err(Error::Env {
                name: pname,
                msg: "gRPC export is plaintext only (a collector on the host or in the pod); \
                      use http/protobuf for an https endpoint"
                    .into(),
            });
        }
        let ratio = match set("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    return Err(Error::Env {
                        name: "OTEL_TRACES_SAMPLER_ARG",
                        msg: format!("{a:?} is not a ratio in [0, 1]"),
                    })
                }
            },
        };
        let sampler = match set("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => Sampler::new(true, 1.0),
            Some("parentbased_always_off") => Sampler::new(true, 0.0),
            Some("parentbased_traceidratio") => Sampler::new(true, ratio),
            Some("always_on") => Sampler::new(false, 1.0),
            Some("always_off") => Sampler::new(false, 0.0),
            Some("traceidratio") => Sampler::new(false, ratio),
            Some(other) => {
                return Err(Error::Env {
                    name: "OTEL_TRACES_SAMPLER",
                    msg: format!(
                        "{other:?} is not supported (always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                    ),
                })
            }
        };
        let ms = |name, default| env_num(&get, name, default).map(Duration::from_millis);
        let s = Settings {
            protocol,
            sampler,
            max_queue: env_num(&get, "OTEL_BSP_MAX_QUEUE_SIZE", 2048usize)?,
            max_batch: env_num(&get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512usize)?,
            delay: ms("OTEL_BSP_SCHEDULE_DELAY", 5000)?,
            export_timeout: ms("OTEL_BSP_EXPORT_TIMEOUT", 30_000)?,
        };
        if s.max_queue == 0 || s.max_batch == 0 {
            return Err(Error::Env {
                name: "OTEL_BSP_MAX_QUEUE_SIZE",
                msg: "the queue and the batch must hold at least one span".into(),
            });
        }
        // A zero delay would spin the export task on a core; a zero timeout would drop
        // every batch.
        for (name, d) in [
            ("OTEL_BSP_SCHEDULE_DELAY", s.delay),
            ("OTEL_BSP_EXPORT_TIMEOUT", s.export_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Env {
                    name,
                    msg: "must be at least 1 (ms)".into(),
                });
            }
        }
        Ok(Some(s))
    }
}

/// A client's `traceparent`: the trace it continues and its span (the parent of ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// Parse a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`; a later version may append
/// fields after a `-`). Invalid (all-zero ids, version `ff`, upper-case hex, wrong
/// lengths): `None`, and the request starts a new trace.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_u128(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = hex_u128(&v[3..35])?;
    let span_id = hex_u128(&v[36..52])? as u64;
    let flags = hex_u128(&v[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn hex_u128(s: &[u8]) -> Option<u128> {
    let mut n: u128 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(d);
    }
    Some(n)
}

/// `traceparent` for a trace id and the span that is the callee's parent (sampled).
pub fn traceparent(trace_id: u128, span_id: u64) -> http::HeaderValue {
    let s = format!("00-{trace_id:032x}-{span_id:016x}-01");
    // Hex digits and dashes only: always a valid header value.
    http::HeaderValue::from_str(&s).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// The client's `tracestate`: several header lines are one list, joined with `,` (W3C);
/// empty, none. Over [`MAX_TRACE_STATE`] bytes in all, it is cut as W3C Trace Context
/// says: entries over 128 bytes go first, then entries from the end, until it fits.
fn trace_state(all: http::header::GetAll<'_, http::HeaderValue>) -> Option<http::HeaderValue> {
    let mut it = all.iter().filter(|v| !v.is_empty());
    let first = it.next()?;
    let Some(second) = it.next() else {
        if first.len() <= MAX_TRACE_STATE {
            return Some(first.clone());
        }
        return truncated_trace_state(all.iter());
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(it) {
        if joined.len() + 1 + v.len() > MAX_TRACE_STATE {
            return truncated_trace_state(all.iter());
        }
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    http::HeaderValue::from_bytes(&joined).ok()
}

/// The most of a client's `tracestate` passed on (W3C: at least 512 should be).
const MAX_TRACE_STATE: usize = 512;

/// W3C's truncation of a `tracestate` list over [`MAX_TRACE_STATE`] bytes: its entries
/// (white space around them trimmed, empty ones left out) without those over 128 bytes,
/// then without the last ones until the rest fits. Nothing left: none.
fn truncated_trace_state<'a>(
    lines: impl Iterator<Item = &'a http::HeaderValue>,
) -> Option<http::HeaderValue> {
    let mut entries: Vec<&[u8]> = lines
        .flat_map(|v| v.as_bytes().split(|&c| c == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty() && e.len() <= 128)
        .collect();
    let mut len = entries
        .iter()
        .map(|e| e.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    while len > MAX_TRACE_STATE {
        let e = entries.pop()?;
        len = len.saturating_sub(e.len() + 1);
    }
    if entries.is_empty() {
        return None;
    }
    http::HeaderValue::from_bytes(&entries.join(&b',')).ok()
}

/// A random non-zero trace id.
pub fn new_trace_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// A random non-zero span id.
pub fn new_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// A sampled server span's identity: its trace, its own id, and the client's span (its
/// remote parent) and `tracestate` if the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent: Option<u64>,
    /// The client's `tracestate`, passed on as is (at most 512 bytes, else cut by
    /// entries as W3C says).
    pub trace_state: Option<http::HeaderValue>,
}

/// A finished span, built after the fact with explicit times.
#[derive(Debug)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    /// 0: a root span.
    pub parent_span_id: u64,
    pub parent_is_remote: bool,
    pub kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub status: Status,
    pub trace_state: Option<http::HeaderValue>,
}

/// The exported and dropped span counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub exported: Counter<u64, AtomicU64>,
    pub dropped: Counter<u64, AtomicU64>,
}

impl Counters {
    /// Registers `trace_spans_exported` and `trace_spans_dropped` (`_total`) in `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "trace_spans_exported",
            "Trace spans the OTLP collector accepted",
            self.exported.clone(),
        );
        reg.register(
            "trace_spans_dropped",
            "Trace spans dropped: the export queue was full, or the export failed or timed out",
            self.dropped.clone(),
        );
    }
}

/// The process's tracer: the sampling decision and the queue to the export task.
#[derive(Debug)]
pub struct Tracer {
    tx: mpsc::Sender<SpanData>,
    sampler: Sampler,
    scope: InstrumentationScope,
    counters: Counters,
}

impl Tracer {
    /// A tracer whose spans go to the returned receiver instead of an exporter (tests, and
    /// embedders with their own export).
    pub fn detached(sampler: Sampler, capacity: usize) -> (Arc<Tracer>, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let tracer = Tracer {
            tx,
            sampler,
            scope: InstrumentationScope::builder("detached").build(),
            counters: Counters::default(),
        };
        (Arc::new(tracer), rx)
    }

    /// The decision for a request with these headers, made once at its start:
    /// `Some` (sampled) gives the server span's identity; `None`, nothing is recorded.
    pub fn start_server(&self, headers: &http::HeaderMap) -> Option<ServerContext> {
        static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
        static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
        // Two `traceparent`s: which one is the caller's is unknown, so neither is
        // continued (W3C: the trace restarts).
        let mut tps = headers.get_all(&TRACEPARENT).iter();
        let parent = match (tps.next(), tps.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        };
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        if !self.sampler.sample(trace_id, parent.as_ref()) {
            return None;
        }
        let trace_state = match parent {
            Some(_) => trace_state(headers.get_all(&TRACESTATE)),
            None => None,
        };
        Some(ServerContext {
            trace_id,
            span_id: new_span_id(),
            parent: parent.map(|p| p.span_id),
            trace_state,
        })
    }

    /// Queue a finished span for export; a full queue drops it (counted).
    pub fn submit(&self, span: Span) {
        let trace_state = span
            .trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let data = SpanData {
            span_context: SpanContext::new(
                TraceId::from(span.trace_id),
                SpanId::from(span.span_id),
                TraceFlags::SAMPLED,
                false,
                trace_state,
            ),
            parent_span_id: SpanId::from(span.parent_span_id),
            parent_span_is_remote: span.parent_is_remote,
            span_kind: span.kind,
            name: span.name,
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: span.status,
            instrumentation_scope: self.scope.clone(),
        };
        if self.tx.try_send(data).is_err() {
            self.counters.dropped.inc();
        }
    }
}

/// Start the export task (in `tasks`, stopped by `cancel` after a last flush of at most
/// 5 s) and return the tracer. Call inside a tokio runtime. `service` is the default
/// `service.name` (`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win);
/// `instance` is `service.instance.id`.
pub fn start(
    settings: &Settings,
    service: &'static str,
    instance: &str,
    counters: Counters,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> Result<Arc<Tracer>, Error> {
    let mut exporter = match settings.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
    }
    .map_err(|e| Error::Exporter(redact_userinfo(&e.to_string())))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service);
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    let (tx, rx) = mpsc::channel(settings.max_queue);
    let tracer = Arc::new(Tracer {
        tx,
        sampler: settings.sampler,
        scope: InstrumentationScope::builder(service)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
        counters: counters.clone(),
    });
    let s = settings.clone();
    tasks.spawn(async move { export(exporter, rx, s, counters, cancel).await });
    Ok(tracer)
}

/// The export loop, on a timer: every `delay` it takes what is queued, in batches of at
/// most `max_batch`, and exports them one at a time, each under `export_timeout`; a failed
/// batch is counted as dropped. The request path never wakes this task (it only
/// `try_send`s into a queue nobody waits on), so the queue must hold a delay's worth of
/// spans (`OTEL_BSP_MAX_QUEUE_SIZE`).
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    s: Settings,
    counters: Counters,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(s.max_batch.min(1024));
    let mut stopping = false;
    let mut failing = false;
    while !stopping {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => stopping = true,
            _ = tokio::time::sleep(s.delay) => {}
        }
        // Shutting down: what is queued goes out in one last round of at most 5 s.
        let final_round = || tokio::time::Instant::now() + s.export_timeout.min(Duration::from_secs(5));
        let mut last = final_round();
        loop {
            while batch.len() < s.max_batch {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let timeout = match stopping {
                true => last.saturating_duration_since(tokio::time::Instant::now()),
                false => s.export_timeout,
            };
            // A shutdown does not wait out a slow export: the batch is dropped (counted)
            // and the last round begins.
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(s.max_batch.min(1024)));
            let n = spans.len() as u64;
            tokio::select! {
                biased;
                _ = send(&exporter, spans, timeout, &counters, &mut failing) => {}
                _ = cancel.cancelled(), if !stopping => {
                    counters.dropped.inc_by(n);
                    stopping = true;
                    last = final_round();
                }
            }
        }
    }
}

/// `s` with the user information of every URL in it (`scheme://user:password@host`)
/// replaced by `***`: an exporter's error quotes the collector's URL, and a password
/// given there (basic auth) must not reach the log. A URL's user information holds no
/// raw `/`, `@`, `"` or white space (the URL standard encodes them), so it ends at the
/// first `@`.
fn redact_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.find('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Export one batch; `failing` says whether the last one failed, so that a collector
/// going away and coming back is logged once each (warn), not once per batch.
async fn send(
    exporter: &opentelemetry_otlp::SpanExporter,
    spans: Vec<SpanData>,
    timeout: Duration,
    counters: &Counters,
    failing: &mut bool,
) {
    let n = spans.len() as u64;
    let error = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(Ok(())) => {
            counters.exported.inc_by(n);
            if std::mem::replace(failing, false) {
                tracing::info!("trace export works again");
            }
            return;
        }
        Ok(Err(e)) => redact_userinfo(&e.to_string()),
        Err(_) => format!("no answer within {timeout:?}"),
    };
    counters.dropped.inc_by(n);
    if !std::mem::replace(failing, true) {
        tracing::warn!(%error, spans = n, "trace export failed; spans are dropped (counted) until it works again");
    } else {
        tracing::debug!(%error, spans = n, "trace export failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, Error> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn off_by_default_and_when_disabled() {
        assert_eq!(settings(&[]).unwrap(), None);
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert!(settings(&[ep]).unwrap().is_some());
        assert_eq!(settings(&[ep, ("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
        assert_eq!(settings(&[ep, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
        assert!(
            settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://x:1/v1/traces")])
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn protocol_sampler_and_batching_from_env() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        let s = settings(&[ep]).unwrap().unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.sampler, Sampler::new(true, 1.0));
        assert_eq!((s.max_queue, s.max_batch), (2048, 512));
        assert_eq!(s.delay, Duration::from_secs(5));
        let s = settings(&[
            ep,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.sampler, Sampler::new(true, 0.01));
        assert_eq!(s.delay, Duration::from_millis(100));
        for bad in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
        ] {
            assert!(settings(&[ep, bad]).is_err(), "{bad:?}");
        }
        let tls = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317");
        assert!(settings(&[tls, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_err());
        assert!(settings(&[tls]).unwrap().is_some());
    }

    #[test]
    fn traceparent_round_trip_and_refusals() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(traceparent(p.trace_id, p.span_id).to_str().unwrap(), v);
        assert!(
            !parse_traceparent(&v.as_bytes()[..54].iter().chain(b"0").copied().collect::<Vec<_>>())
                .unwrap()
                .sampled
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        // A later version may append fields.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
    }

    /// W3C: two `traceparent` headers restart the trace (neither is continued);
    /// several `tracestate` lines are one list.
    #[test]
    fn duplicated_traceparent_restarts_and_tracestate_lines_join() {
        let (tracer, _rx) = Tracer::detached(Sampler::new(true, 1.0), 1);
        let a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let b = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = http::HeaderMap::new();
        h.append("traceparent", http::HeaderValue::from_static(a));
        h.append("tracestate", http::HeaderValue::from_static("congo=t61rcWkgMzE"));
        h.append(
            "tracestate",
            http::HeaderValue::from_static("rojo=00f067aa0ba902b7"),
        );
        let cx = tracer.start_server(&h).unwrap();
        assert_eq!(cx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(cx.parent, Some(0x00f067aa0ba902b7));
        assert_eq!(
            cx.trace_state.unwrap().to_str().unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        h.append("traceparent", http::HeaderValue::from_static(b));
        let cx = tracer.start_server(&h).unwrap();
        assert_ne!(cx.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(cx.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!((cx.parent, cx.trace_state), (None, None));
        // Over 512 bytes together: cut as W3C says, entries over 128 bytes first, then
        // from the end; nothing left, none.
        let state = |lines: &[String]| {
            let mut h = http::HeaderMap::new();
            h.append("traceparent", http::HeaderValue::from_static(a));
            for l in lines {
                h.append("tracestate", http::HeaderValue::from_str(l).unwrap());
            }
            tracer
                .start_server(&h)
                .unwrap()
                .trace_state
                .map(|v| v.to_str().unwrap().to_string())
        };
        let long = format!("k={}", "v".repeat(300));
        assert_eq!(state(std::slice::from_ref(&long)), Some(long.clone()));
        assert_eq!(state(&[long.clone(), long.clone()]), None);
        let e = |k: usize| format!("k{k}={}", "x".repeat(100));
        let five: Vec<String> = (0..5).map(e).collect();
        assert_eq!(state(&five), Some((0..4).map(e).collect::<Vec<_>>().join(",")));
        let mixed = [format!("a=1,{long}, b=2"), e(7), e(8), e(9), e(10)];
        assert_eq!(
            state(&mixed),
            Some(format!("a=1,b=2,{},{},{},{}", e(7), e(8), e(9), e(10)))
        );
        let fits = format!("{},{}", e(1), e(2));
        assert_eq!(state(std::slice::from_ref(&fits)), Some(fits.clone()));
    }

    #[test]
    fn urls_in_errors_lose_their_passwords() {
        let e = r#"Operation failed: reqwest::Error { kind: Request, url: "http://user:s3cret@127.0.0.1:9/v1/traces", source: x }"#;
        assert_eq!(
            redact_userinfo(e),
            r#"Operation failed: reqwest::Error { kind: Request, url: "http://***@127.0.0.1:9/v1/traces", source: x }"#
        );
        for (i, o) in [
            (
                "error for url (https://a:b%40c@h)",
                "error for url (https://***@h)",
            ),
            (
                "https://h:4318/v1/traces and http://u@h2 x",
                "https://h:4318/v1/traces and http://***@h2 x",
            ),
            ("no url here: a@b", "no url here: a@b"),
            ("://", "://"),
            ("", ""),
        ] {
            assert_eq!(redact_userinfo(i), o, "{i}");
        }
    }

    #[test]
    fn ratio_sampling_follows_the_trace_id_and_parent_flag() {
        let half = Sampler::new(false, 0.5);
        assert!(half.sample(0, None));
        assert!(!half.sample(u128::from(u64::MAX), None));
        let never = Sampler::new(true, 0.0);
        let parent = |sampled| Parent {
            trace_id: 1,
            span_id: 1,
            sampled,
        };
        assert!(never.sample(1, Some(&parent(true))));
        assert!(!Sampler::new(true, 1.0).sample(1, Some(&parent(false))));
        assert!(!Sampler::new(false, 0.0).sample(1, Some(&parent(true))));
        // About 1% of random trace ids.
        let one = Sampler::new(false, 0.01);
        let n = (0..100_000).filter(|_| one.sample(new_trace_id(), None)).count();
        assert!((700..1300).contains(&n), "{n}");
    }
}
