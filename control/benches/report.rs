//! Report ingestion cost: `Store::report` of 500-record usage batches (the worker's
//! `batch_max`) with fresh ids, on SQLite in a temp dir and, when
//! `SWITCHYARD_TEST_POSTGRES_URL` is set, on a fresh Postgres database. Besides
//! criterion's wall-clock figures it prints rows/s and process CPU per record for a
//! fixed run of 3 × 20 batches, because control shares a core with the data plane in the
//! benchmark and CPU is what it takes from it.
#![allow(clippy::unwrap_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchyard_control::{crypto::Keyring, metrics::Metrics, store::Store};
use switchyard_proto::v1 as pb;

const BATCH: usize = 500;

fn record(i: usize) -> pb::UsageRecord {
    pb::UsageRecord {
        team: Default::default(),
        id: uuid::Uuid::now_v7().to_string(),
        ts_ms: switchyard_control::store::now_ms(),
        request_id: format!("req-{i}"),
        worker_id: String::new(),
        key_id: "key-id-0001".into(),
        key_name: "team-a".into(),
        model: "gpt-4o".into(),
        backend: "primary".into(),
        provider: "openai".into(),
        credential: "key-1".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        stream: i & 1 == 0,
        retries: 0,
        latency_us: 12_345,
        ttfb_us: 2_345,
        prompt_tokens: 100,
        completion_tokens: 200,
        total_tokens: 300,
        cached_tokens: 10,
        reasoning_tokens: 0,
        outcome: "ok".into(),
        cache_write_tokens: 0,
        cost_nano: Some(2_250_000),
    }
}

fn batch(n: usize, health: usize) -> pb::ReportRequest {
    pb::ReportRequest {
        worker_id: "bench-worker".into(),
        batch_id: uuid::Uuid::now_v7().to_string(),
        usage: (0..n).map(record).collect(),
        health: (0..health)
            .map(|i| pb::HealthEvent {
                id: uuid::Uuid::now_v7().to_string(),
                ts_ms: switchyard_control::store::now_ms(),
                worker_id: String::new(),
                kind: "backend".into(),
                model: "gpt-4o".into(),
                backend: "primary".into(),
                provider: "openai".into(),
                credential: String::new(),
                healthy: i & 1 == 0,
                reason: "probe failed: 503".into(),
            })
            .collect(),
    }
}

/// CPU time of this process so far, summed over its threads (sqlx's SQLite worker
/// threads included), from `/proc/self/task/*/schedstat` (nanoseconds on CPU).
fn process_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// A fresh Postgres database on the test server, dropped by the returned guard.
struct PgDb {
    base: String,
    name: String,
    url: String,
}

impl PgDb {
    fn create(rt: &tokio::runtime::Runtime, base: &str) -> PgDb {
        let name = format!("sy_bench_{}", uuid::Uuid::new_v4().simple());
        rt.block_on(async {
            use sqlx::Connection;
            sqlx::any::install_default_drivers();
            let mut c = sqlx::AnyConnection::connect(base).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
        });
        let (head, query) = base.split_once('?').map_or((base, None), |(h, q)| (h, Some(q)));
        let root = head.rsplit_once('/').map_or(head, |(r, _)| r);
        let url = match query {
            Some(q) => format!("{root}/{name}?{q}"),
            None => format!("{root}/{name}"),
        };
        PgDb {
            base: base.to_string(),
            name,
            url,
        }
    }

    fn drop_on(&self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::AnyConnection::connect(&self.base).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&mut c)
                .await
                .unwrap();
        });
    }
}

fn run(c: &mut Criterion, rt: &tokio::runtime::Runtime, label: &str, url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async {
        Arc::new(
            Store::open(url, dir.path(), Keyring::default(), Arc::new(Metrics::new()))
                .await
                .unwrap(),
        )
    });

    // The fixed run, after one batch that opens connections and prepares statements:
    // three rounds of 20 batches of 500, wall clock and process CPU.
    rt.block_on(store.report(&batch(BATCH, 0))).unwrap();
    for round in 1..=3 {
        let batches: Vec<_> = (0..20).map(|_| batch(BATCH, 0)).collect();
        let (cpu0, t0) = (process_cpu(), Instant::now());
        rt.block_on(async {
            for b in &batches {
                let (stored, ..) = store.report(b).await.unwrap();
                assert_eq!(stored as usize, BATCH);
            }
        });
        let (wall, cpu) = (t0.elapsed(), process_cpu().saturating_sub(cpu0));
        let rows = (batches.len() * BATCH) as f64;
        eprintln!(
            "report {label} round {round}: {rows} rows in {:.3}s = {:.0} rows/s, process CPU {:.2} µs/row",
            wall.as_secs_f64(),
            rows / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / rows
        );
    }

    let mut g = c.benchmark_group(format!("report_{label}"));
    g.sample_size(20);
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("usage_500", |b| {
        b.iter_batched(
            || batch(BATCH, 0),
            |req| rt.block_on(store.report(&req)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    // A resent batch: every record is a duplicate.
    let resent = batch(BATCH, 0);
    rt.block_on(store.report(&resent)).unwrap();
    g.bench_function("usage_500_resent", |b| {
        b.iter(|| rt.block_on(store.report(&resent)).unwrap())
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("health_100", |b| {
        b.iter_batched(
            || batch(0, 100),
            |req| rt.block_on(store.report(&req)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
    rt.block_on(store.close());
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    run(c, &rt, "sqlite", None);
    if let Ok(base) = std::env::var("SWITCHYARD_TEST_POSTGRES_URL") {
        let db = PgDb::create(&rt, &base);
        run(c, &rt, "postgres", Some(&db.url));
        db.drop_on(&rt);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
