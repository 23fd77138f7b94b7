//! Criterion micro-benches for the worker's per-snapshot and per-request hot paths:
//! snapshot apply (proto `Snapshot` → validated `Routing` → swap) at 5,000 backends
//! (budget: under 10 ms), and model extraction + rewrite on 1 KB, 100 KB and 10 MB bodies
//! (budget: linear, and at most one copy of the body, which the `copies` bench counts; the
//! `memcpy` group is the time of one copy). Runs on the worker's allocator, jemalloc.
#![allow(clippy::unwrap_used)]

use std::{hint::black_box, sync::Arc};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard_proto::v1 as pb;
use switchyard_worker::{balance::BreakerConfig, config::Routing, convert, extract, upstream::Connector};

mod common;
use common::{body, SIZES};

const PROVIDERS: usize = 50;
const MODELS: usize = 500;
const BACKENDS_PER_MODEL: usize = 10;
const KEYS: usize = 1_000;

/// 50 providers × 2 credentials, 500 models × 10 backends (5,000 backends), 1,000 keys.
fn snapshot(version: u64) -> pb::Snapshot {
    let providers = (0..PROVIDERS)
        .map(|i| pb::Provider {
            name: format!("provider-{i}"),
            kind: if i % 5 == 0 { "anthropic" } else { "openai" }.into(),
            base_url: format!("https://upstream-{i}.example/v1"),
            headers: [("x-team".to_string(), "bench".to_string())].into(),
            credentials: (0..2)
                .map(|c| pb::Credential {
                    name: format!("key-{c}"),
                    secret: format!("sk-bench-secret-{i:05}-{c}-0123456789abcdef"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let models = (0..MODELS)
        .map(|i| pb::Model {
            name: format!("model-{i}"),
            strategy: "weighted_round_robin".into(),
            backends: (0..BACKENDS_PER_MODEL)
                .map(|b| pb::Backend {
                    name: format!("b{b}"),
                    provider: format!("provider-{}", (i + b * 7) % PROVIDERS),
                    upstream_model: format!("upstream-model-{i}-{b}"),
                    weight: Some(1 + b as u32),
                    priority: Some((b / 4) as i32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let keys = (0..KEYS)
        .map(|i| pb::ApiKey {
            id: format!("key-id-{i}"),
            name: format!("key-{i}"),
            key_hash: format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
            allowed_models: if i % 2 == 0 {
                vec![format!("model-{i}")]
            } else {
                vec![]
            },
            ..Default::default()
        })
        .collect();
    pb::Snapshot {
        limits: Default::default(),
        version,
        hash: format!("{version:064x}"),
        created_at_ms: 0,
        providers,
        models,
        keys,
    }
}

/// What `Shared::apply` does minus the probe tasks: carry endpoint states over from the
/// current table, build and validate the new one, swap it in (the old one drops here).
fn apply(current: &ArcSwapOption<Routing>, snap: &pb::Snapshot, clients: &Connector) {
    let prev = current.load_full();
    let states = prev.as_ref().map(|p| p.states()).unwrap_or_default();
    let routing = convert::build(snap, &states, clients, BreakerConfig::default()).unwrap();
    drop(prev);
    current.store(Some(Arc::new(routing)));
}

fn snapshot_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_apply");
    group.sample_size(20);
    let clients = Connector::new().unwrap();
    let a = snapshot(1);
    let b = snapshot(2);
    let backends: usize = a.models.iter().map(|m| m.backends.len()).sum();
    assert_eq!(backends, 5_000);

    // First apply: no previous table, every endpoint state is new.
    group.bench_function(BenchmarkId::new("cold", backends), |bench| {
        bench.iter(|| {
            let current = ArcSwapOption::empty();
            apply(&current, black_box(&a), &clients);
            current
        });
    });
    // A config change on a running worker: states carried over by identity.
    let current = ArcSwapOption::empty();
    apply(&current, &a, &clients);
    let mut flip = false;
    group.bench_function(BenchmarkId::new("warm", backends), |bench| {
        bench.iter(|| {
            flip = !flip;
            apply(&current, black_box(if flip { &b } else { &a }), &clients);
        });
    });
    // Including the protobuf decode of the wire message, as the watch client receives it.
    let wire = prost::Message::encode_to_vec(&a);
    group.bench_function(BenchmarkId::new("decode+warm", backends), |bench| {
        bench.iter(|| {
            let snap: pb::Snapshot = prost::Message::decode(black_box(wire.as_slice())).unwrap();
            apply(&current, &snap, &clients);
        });
    });
    group.finish();
}

/// The worker's own allocator (`main.rs`): snapshot apply allocates and frees a table of
/// thousands of entries, and glibc's malloc made it look ~40% slower than it runs.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn extract_rewrite(c: &mut Criterion) {
    let upstream_model_json = Bytes::from_static(b"\"gpt-4o-2024-08-06\"");
    for (size, label) in SIZES {
        let b = body(size);
        let mut group = c.benchmark_group(format!("body/{label}"));
        group.throughput(Throughput::Bytes(b.len() as u64));
        if size >= 1 << 20 {
            group.sample_size(20);
        }
        // The per-request path in `proxy`: one scan, then one spliced copy.
        group.bench_function("scan", |bench| {
            bench.iter(|| extract::scan(black_box(&b)).unwrap());
        });
        group.bench_function("scan+rewrite", |bench| {
            bench.iter(|| {
                let head = extract::scan(black_box(&b)).unwrap();
                let range = head.model_range.unwrap();
                extract::splice(&b, range, &upstream_model_json)
            });
        });
        // Rewrite plus the injected `stream_options.include_usage` (OpenAI streams).
        group.bench_function("scan+rewrite+usage", |bench| {
            bench.iter(|| {
                let head = extract::scan(black_box(&b)).unwrap();
                let range = head.model_range.clone().unwrap();
                let mut edits = vec![
                    (range, upstream_model_json.clone()),
                    extract::include_usage_edit(&b, &head),
                ];
                extract::splice_many(&b, &mut edits)
            });
        });
        // Baseline: one copy of the body, the budget's upper bound for the copy part.
        group.bench_function("memcpy", |bench| {
            bench.iter(|| Bytes::copy_from_slice(black_box(&b)));
        });
        group.finish();
    }
}

criterion_group!(benches, snapshot_apply, extract_rewrite);
criterion_main!(benches);
