//! Criterion micro-benches for endpoint selection: each strategy's pick at 1, 10, 100 and
//! 1,000 endpoints (budget: under 200 ns at 1,000), an affinity pick, and a retry pick
//! that excludes one endpoint (the slow path).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use switchyard_worker::balance::{BreakerConfig, Endpoint, EndpointState, PickContext, Selector, Strategy};

const SIZES: [usize; 4] = [1, 10, 100, 1_000];

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let state = EndpointState::new(BreakerConfig::default());
            // Distinct latencies so least_latency has something to compare.
            state.record_success(0, 100_000 + (i as u64 % 17) * 1_000);
            Endpoint::new(&format!("backend-{i}"), 1 + (i as u32 % 4), 0, state)
        })
        .collect()
}

fn strategies(c: &mut Criterion) {
    for strategy in Strategy::ALL {
        let mut group = c.benchmark_group(format!("pick/{strategy}"));
        for n in SIZES {
            let eps = endpoints(n);
            let selector = Selector::new(strategy);
            group.bench_with_input(BenchmarkId::from_parameter(n), &eps, |b, eps| {
                let ctx = PickContext {
                    now_ms: 1_000,
                    ..Default::default()
                };
                b.iter(|| black_box(selector.pick(black_box(eps), &ctx)));
            });
        }
        group.finish();
    }
}

fn affinity(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick/affinity");
    for n in SIZES {
        let eps = endpoints(n);
        let selector = Selector::new(Strategy::RoundRobin);
        group.bench_with_input(BenchmarkId::from_parameter(n), &eps, |b, eps| {
            let mut key = 0u64;
            b.iter(|| {
                key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let ctx = PickContext {
                    now_ms: 1_000,
                    excluded: &[],
                    affinity: Some(key),
                };
                black_box(selector.pick(black_box(eps), &ctx))
            });
        });
    }
    group.finish();
}

fn busy_least_connections(c: &mut Criterion) {
    // Every endpoint has requests in flight: no early exit, a full scan.
    let mut group = c.benchmark_group("pick/least_connections_busy");
    for n in SIZES {
        let eps = endpoints(n);
        let guards: Vec<_> = eps
            .iter()
            .flat_map(|e| [e.state.start(), e.state.start()])
            .collect();
        let selector = Selector::new(Strategy::LeastConnections);
        group.bench_with_input(BenchmarkId::from_parameter(n), &eps, |b, eps| {
            let ctx = PickContext {
                now_ms: 1_000,
                ..Default::default()
            };
            b.iter(|| black_box(selector.pick(black_box(eps), &ctx)));
        });
        drop(guards);
    }
    group.finish();
}

fn retry_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick/retry_excluding_one");
    for n in SIZES {
        let eps = endpoints(n);
        let selector = Selector::new(Strategy::RoundRobin);
        group.bench_with_input(BenchmarkId::from_parameter(n), &eps, |b, eps| {
            let ctx = PickContext {
                now_ms: 1_000,
                excluded: &[0],
                affinity: None,
            };
            b.iter(|| black_box(selector.pick(black_box(eps), &ctx)));
        });
    }
    group.finish();
}

criterion_group!(benches, strategies, affinity, busy_least_connections, retry_pick);
criterion_main!(benches);
