//! Prometheus metrics for `GET /metrics`. Labels are low-cardinality only: model,
//! backend, provider, status class, error kind (never keys, secrets or request ids).
use std::sync::{
    atomic::{AtomicI64, AtomicU64},
    Arc, OnceLock,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::config::Routing;

type Labels = Vec<(&'static str, String)>;
type HistFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// One model's series, resolved once per snapshot instead of once per request (a family
/// lookup builds its label strings and hashes them).
#[derive(Debug)]
pub struct ModelHandles {
    model: Arc<str>,
    series: OnceLock<ModelSeries>,
}

#[derive(Debug)]
pub struct ModelSeries {
    pub duration: Histogram,
    pub ttfb: Histogram,
    pub retries: Counter,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
}

impl ModelHandles {
    pub fn new(model: Arc<str>) -> Self {
        Self {
            model,
            series: OnceLock::new(),
        }
    }

    pub fn get(&self, m: &Metrics) -> &ModelSeries {
        self.series.get_or_init(|| m.model_series(&self.model))
    }
}

/// One backend's request counters by status class, resolved on first use.
#[derive(Debug)]
pub struct BackendHandles {
    model: Arc<str>,
    backend: Arc<str>,
    requests: [OnceLock<Counter>; 5],
}

impl BackendHandles {
    /// The names are the routing table's own (shared, not copied).
    pub fn new(model: Arc<str>, backend: Arc<str>) -> Self {
        Self {
            model,
            backend,
            requests: Default::default(),
        }
    }

    pub fn requests(&self, m: &Metrics, status: u16) -> &Counter {
        let class = Metrics::status_class(status);
        let i = usize::from(class.as_bytes()[0] - b'1');
        self.requests[i].get_or_init(|| m.requests_series(&self.model, &self.backend, class))
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub duration: HistFamily,
    pub ttfb: HistFamily,
    pub retries: Family<Labels, Counter>,
    pub upstream_errors: Family<Labels, Counter>,
    pub tokens: Family<Labels, Counter>,
    pub inflight: Gauge<i64, AtomicI64>,
    backend_healthy: Family<Labels, Gauge>,
    credential_healthy: Family<Labels, Gauge>,
    config_version: Gauge<i64, AtomicI64>,
    pub usage_dropped: Counter<u64, AtomicU64>,
    /// Usage records kept in the in-memory queue because the journal had no room or is
    /// unavailable (lost if the worker is killed before they are reported).
    pub usage_journal_fallback: Counter<u64, AtomicU64>,
    /// Usage records finished but not yet acknowledged by control (queued, batched or spooled).
    pub reports_pending: Gauge<i64, AtomicI64>,
    /// 1 while the reporter sleeps with no timer (see `report::run`), else 0.
    pub reporter_idle: Gauge<i64, AtomicI64>,
    /// Mirrors `strip::OVERSIZE_EVENTS` (read at each render).
    strip_oversize: Counter<u64, AtomicU64>,
    /// Requests refused by a limit, by limit name (bounded by config).
    limit_refusals: Family<Labels, Counter>,
    /// Requests an `observe` limit would have refused.
    limit_observed_over: Family<Labels, Counter>,
    /// Per limit: this instance's use in the current window, and the ceiling it holds.
    limit_used: Family<Labels, Gauge>,
    limit_ceiling: Family<Labels, Gauge>,
    limit_granted: Family<Labels, Gauge>,
    /// Trace spans exported and dropped (`switchyard_otel`).
    pub traces: switchyard_otel::Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Proxied requests by model, backend and status class",
            requests.clone(),
        );
        let duration: HistFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Request duration until the response ends",
            duration.clone(),
        );
        let ttfb: HistFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "ttfb_seconds",
            "Time to the first response byte from the upstream",
            ttfb.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register("retries", "Retries by model", retries.clone());
        let upstream_errors = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        let tokens = Family::<Labels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens reported by upstreams, by model and type",
            tokens.clone(),
        );
        let inflight = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "inflight_requests",
            "Requests in flight on this worker",
            inflight.clone(),
        );
        let backend_healthy = Family::<Labels, Gauge>::default();
        registry.register(
            "backend_healthy",
            "1 when the backend is available",
            backend_healthy.clone(),
        );
        let credential_healthy = Family::<Labels, Gauge>::default();
        registry.register(
            "credential_healthy",
            "1 when the credential is available",
            credential_healthy.clone(),
        );
        let config_version = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_version",
            "Applied config snapshot version",
            config_version.clone(),
        );
        let usage_dropped = Counter::<u64, AtomicU64>::default();
        registry.register(
            "reports_dropped",
            "Usage records not reported to control (queue or buffer full)",
            usage_dropped.clone(),
        );
        let usage_journal_fallback = Counter::<u64, AtomicU64>::default();
        registry.register(
            "usage_journal_fallback",
            "Usage records queued in memory because the usage journal was full or unavailable",
            usage_journal_fallback.clone(),
        );
        let reports_pending = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "reports_pending",
            "Report records (usage and health) not yet acknowledged by control (queued, batched or spooled)",
            reports_pending.clone(),
        );
        let reporter_idle = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "reporter_idle",
            "1 while the usage reporter sleeps with no timer (nothing to send, every target healthy); the next request or health change wakes it",
            reporter_idle.clone(),
        );
        let strip_oversize = Counter::<u64, AtomicU64>::default();
        registry.register(
            "stream_events_unstripped",
            "SSE events longer than the stripper's bound (strip::MAX_HELD_EVENT) passed to the client without the injected usage removed",
            strip_oversize.clone(),
        );
        let limit_refusals = Family::<Labels, Counter>::default();
        registry.register(
            "limit_refusals",
            "Requests refused (429) by a limit, by limit name",
            limit_refusals.clone(),
        );
        let limit_observed_over = Family::<Labels, Counter>::default();
        registry.register(
            "limit_observed_over",
            "Requests an observe-mode limit admitted beyond what it would have allowed, by limit name",
            limit_observed_over.clone(),
        );
        let limit_used = Family::<Labels, Gauge>::default();
        registry.register(
            "limit_used",
            "This worker's consumption of a limit in its current window (in flight, for concurrency)",
            limit_used.clone(),
        );
        let limit_ceiling = Family::<Labels, Gauge>::default();
        registry.register(
            "limit_ceiling",
            "How far this worker's consumption of a limit may go under its current lease (0: none held)",
            limit_ceiling.clone(),
        );
        let limit_granted = Family::<Labels, Gauge>::default();
        registry.register(
            "limit_granted",
            "1 while this worker holds an unexpired lease on the limit from control",
            limit_granted.clone(),
        );
        let traces = switchyard_otel::Counters::default();
        traces.register(&mut registry);
        Self {
            registry,
            traces,
            limit_granted,
            limit_refusals,
            limit_observed_over,
            limit_used,
            limit_ceiling,
            reports_pending,
            reporter_idle,
            strip_oversize,
            requests,
            duration,
            ttfb,
            retries,
            upstream_errors,
            tokens,
            inflight,
            backend_healthy,
            credential_healthy,
            config_version,
            usage_dropped,
            usage_journal_fallback,
        }
    }

    pub fn model_series(&self, model: &str) -> ModelSeries {
        let l = vec![("model", model.to_string())];
        let tokens = |ty: &str| {
            (*self
                .tokens
                .get_or_create(&vec![("model", model.to_string()), ("type", ty.into())]))
            .clone()
        };
        ModelSeries {
            duration: (*self.duration.get_or_create(&l)).clone(),
            ttfb: (*self.ttfb.get_or_create(&l)).clone(),
            retries: (*self.retries.get_or_create(&l)).clone(),
            prompt_tokens: tokens("prompt"),
            completion_tokens: tokens("completion"),
        }
    }

    pub fn requests_series(&self, model: &str, backend: &str, class: &str) -> Counter {
        (*self.requests.get_or_create(&vec![
            ("model", model.to_string()),
            ("backend", backend.to_string()),
            ("status_class", class.to_string()),
        ]))
        .clone()
    }

    /// The refusal counter of limit `name` (resolved once per limit state).
    pub fn limit_refusals(&self, name: &str) -> Counter {
        (*self
            .limit_refusals
            .get_or_create(&vec![("limit", name.to_string())]))
        .clone()
    }

    pub fn limit_observed_over(&self, name: &str) -> Counter {
        (*self
            .limit_observed_over
            .get_or_create(&vec![("limit", name.to_string())]))
        .clone()
    }

    pub fn status_class(status: u16) -> &'static str {
        match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        }
    }

    /// Render the text exposition; health gauges are refreshed from `routing` first.
    pub fn render(&self, routing: Option<&Routing>, now_ms: u64) -> String {
        self.backend_healthy.clear();
        self.credential_healthy.clear();
        self.limit_used.clear();
        self.limit_ceiling.clear();
        self.limit_granted.clear();
        if let Some(r) = routing {
            for l in &r.limits {
                let labels = vec![("limit", l.def.name.to_string())];
                let (used, ceiling, granted) = l.gauges(crate::unix_ms());
                self.limit_used.get_or_create(&labels).set(used as i64);
                self.limit_ceiling.get_or_create(&labels).set(ceiling as i64);
                self.limit_granted.get_or_create(&labels).set(i64::from(granted));
            }
            self.config_version.set(r.version as i64);
            for m in r.models.values() {
                for route in m.routes.iter().flatten() {
                    for b in route.native_backends() {
                        let labels = vec![
                            ("model", m.name.to_string()),
                            ("backend", b.name.to_string()),
                            ("provider", r.providers[b.provider].name.to_string()),
                        ];
                        self.backend_healthy
                            .get_or_create(&labels)
                            .set(i64::from(b.state.is_available(now_ms)));
                    }
                }
            }
            for p in &r.providers {
                for c in &p.credentials {
                    let labels = vec![
                        ("provider", p.name.to_string()),
                        ("credential", c.name.to_string()),
                    ];
                    self.credential_healthy
                        .get_or_create(&labels)
                        .set(i64::from(c.state.is_available(now_ms)));
                }
            }
        }
        let oversize = crate::strip::OVERSIZE_EVENTS.load(std::sync::atomic::Ordering::Relaxed);
        self.strip_oversize
            .inner()
            .fetch_max(oversize, std::sync::atomic::Ordering::Relaxed);
        let mut out = String::with_capacity(8192);
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        switchyard_common::to_prometheus_text(&out)
    }
}
