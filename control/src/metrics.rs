//! Prometheus metrics of the control plane, served on `/metrics` by [`crate::http`].
use std::{
    sync::atomic::{AtomicI64, AtomicU64},
    time::Duration,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub struct Metrics {
    registry: Registry,
    pub workers_connected: Gauge<i64, AtomicI64>,
    pub snapshot_version: Gauge<i64, AtomicI64>,
    pub snapshots_built: Counter<u64, AtomicU64>,
    pub report_batches: Counter<u64, AtomicU64>,
    pub report_usage_rows: Counter<u64, AtomicU64>,
    pub report_health_rows: Counter<u64, AtomicU64>,
    pub acks: Counter<u64, AtomicU64>,
    pub nacks: Counter<u64, AtomicU64>,
    pub lease_calls: Counter<u64, AtomicU64>,
    db_seconds: Histogram,
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
        let mut registry = Registry::with_prefix("switchyard_control");
        let m = Metrics {
            workers_connected: Gauge::default(),
            snapshot_version: Gauge::default(),
            snapshots_built: Counter::default(),
            report_batches: Counter::default(),
            report_usage_rows: Counter::default(),
            report_health_rows: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            lease_calls: Counter::default(),
            db_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            registry: Registry::default(),
            traces: switchyard_otel::Counters::default(),
        };
        m.traces.register(&mut registry);
        registry.register(
            "workers_connected",
            "Workers with an open watch stream",
            m.workers_connected.clone(),
        );
        registry.register(
            "snapshot_version",
            "Version of the latest published snapshot",
            m.snapshot_version.clone(),
        );
        registry.register(
            "snapshots_built",
            "Snapshots built and published",
            m.snapshots_built.clone(),
        );
        registry.register(
            "report_batches",
            "Report batches committed",
            m.report_batches.clone(),
        );
        registry.register(
            "report_usage_rows",
            "Usage records stored (duplicates excluded)",
            m.report_usage_rows.clone(),
        );
        registry.register(
            "report_health_rows",
            "Health events stored (duplicates excluded)",
            m.report_health_rows.clone(),
        );
        registry.register("acks", "Snapshot ACKs from workers", m.acks.clone());
        registry.register("nacks", "Snapshot NACKs from workers", m.nacks.clone());
        registry.register(
            "lease_calls",
            "Lease RPCs answered (limit leases renewed by workers)",
            m.lease_calls.clone(),
        );
        registry.register(
            "db_transaction_seconds",
            "Time spent in database transactions",
            m.db_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn observe_db(&self, d: Duration) {
        self.db_seconds.observe(d.as_secs_f64());
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        switchyard_common::to_prometheus_text(&out)
    }
}
