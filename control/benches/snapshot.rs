//! Snapshot build cost at scale: 1,000 providers × 5 credentials and 1,000 models ×
//! 5 backends, stored in SQLite through the real write path, then (a) the builder's
//! full path (consistent DB read → domain config → proto snapshot → encode) and
//! (b) build + encode from an in-memory config.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message;
use switchyard_control::{apply, crypto::Keyring, metrics::Metrics, snapshot, store::Store};
use switchyard_proto::v1 as pb;

fn document(n: usize) -> pb::ConfigDocument {
    let providers = (0..n)
        .map(|i| pb::Provider {
            name: format!("provider-{i}"),
            kind: "openai".into(),
            base_url: format!("https://upstream-{i}.example/v1"),
            credentials: (0..5)
                .map(|c| pb::Credential {
                    name: format!("key-{c}"),
                    secret: format!("sk-bench-secret-{i:05}-{c}-0123456789abcdef"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let models = (0..n)
        .map(|i| pb::Model {
            name: format!("model-{i}"),
            strategy: "weighted_round_robin".into(),
            backends: (0..5)
                .map(|b| pb::Backend {
                    name: format!("b{b}"),
                    provider: format!("provider-{}", (i + b * 7) % n),
                    weight: Some(1 + b as u32),
                    priority: Some((b / 2) as i32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    pb::ConfigDocument {
        limits: Default::default(),
        providers,
        models,
        keys: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async {
        let store = Store::open(None, dir.path(), Keyring::default(), Arc::new(Metrics::new()))
            .await
            .unwrap();
        let doc = document(1000);
        store
            .mutate(false, |s| apply::apply_document(s, &doc, false))
            .await
            .unwrap();
        Arc::new(store)
    });
    let (version, state) = rt.block_on(store.load_consistent()).unwrap();
    let bytes = snapshot::build(version, &state).snapshot.encoded_len();
    eprintln!("snapshot: version {version}, {bytes} bytes encoded");

    let mut g = c.benchmark_group("snapshot_1000x5");
    g.sample_size(20);
    g.bench_function("db_read_build_encode", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            async move {
                let (v, s) = store.load_consistent().await.unwrap();
                snapshot::build(v, &s).snapshot.encode_to_vec()
            }
        })
    });
    g.bench_function("build_encode_in_memory", |b| {
        b.iter(|| snapshot::build(version, &state).snapshot.encode_to_vec())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
