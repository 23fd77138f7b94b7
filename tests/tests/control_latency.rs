//! Measures the time from an admin write to a connected watcher seeing the new
//! snapshot (real binary, real gRPC, SQLite and Postgres) and prints the median.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::time::{Duration, Instant};

use control_common::*;
use switchyard_proto::v1 as pb;
use switchyard_tests::{store_test, TestDb};

store_test!(commit_to_watcher_latency, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    a.create_provider(pb::CreateProviderRequest {
        provider: Some(provider("openai", "https://api.openai.com/v1")),
    })
    .await?;
    let v = version(&mut a).await?;
    let mut w = Watcher::connect(&p, "latency", 0).await?;
    let s = w.next_at(v).await?;
    w.ack(&s).await?;
    let mut samples = Vec::new();
    for i in 0..50u64 {
        let mut pr = provider("openai", "https://api.openai.com/v1");
        pr.connect_timeout_ms = 1000 + i;
        let t0 = Instant::now();
        let r = a
            .update_provider(pb::UpdateProviderRequest {
                provider: Some(pr),
                update_mask: vec!["connect_timeout_ms".into()],
            })
            .await?
            .into_inner();
        assert_eq!(r.connect_timeout_ms, 1000 + i);
        let s = loop {
            let s = w.next().await?;
            if s.providers[0].connect_timeout_ms == 1000 + i {
                break s;
            }
        };
        samples.push(t0.elapsed());
        w.ack(&s).await?;
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    let p90 = samples[samples.len() * 9 / 10];
    println!(
        "commit->watcher latency ({:?}): median {median:?}, p90 {p90:?}, max {:?} (write RPC included)",
        db.kind,
        samples[samples.len() - 1]
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
    Ok(())
});
