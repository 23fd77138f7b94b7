//! Control plane Watch stream, worker tracking, persistence across restarts and
//! process behaviour (graceful SIGTERM, config errors), on SQLite and Postgres.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::time::Duration;

use control_common::*;
use switchyard_proto::v1 as pb;
use switchyard_tests::{bin_path, store_test, wait_for, TestDb};

async fn add_provider(a: &mut Admin, name: &str) -> anyhow::Result<()> {
    a.create_provider(pb::CreateProviderRequest {
        provider: Some(provider(name, "https://api.openai.com/v1")),
    })
    .await?;
    Ok(())
}

store_test!(watch_gets_each_change_and_resumes, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    add_provider(&mut a, "p1").await?;
    let v1 = version(&mut a).await?;

    // A fresh worker gets the current snapshot at once.
    let mut w = Watcher::connect(&p, "w1", 0).await?;
    let s = w.next_at(v1).await?;
    assert_eq!(s.version, v1);
    assert_eq!(s.hash.len(), 64);
    assert_eq!(s.providers.len(), 1);
    w.ack(&s).await?;

    // Each change arrives as a newer snapshot.
    let mut last = s;
    for name in ["p2", "p3", "p4"] {
        add_provider(&mut a, name).await?;
        let s = w.next().await?;
        assert!(s.version > last.version);
        assert_ne!(s.hash, last.hash);
        assert!(s.providers.iter().any(|p| p.name == name));
        w.ack(&s).await?;
        last = s;
    }
    assert_eq!(last.version, version(&mut a).await?);
    drop(w);

    // Reconnecting with the current version gets nothing until a newer one exists.
    let mut w = Watcher::connect(&p, "w1", last.version).await?;
    w.expect_quiet(Duration::from_millis(300)).await?;
    add_provider(&mut a, "p5").await?;
    let s = w.next().await?;
    assert_eq!(s.version, last.version + 1);
    assert_eq!(s.providers.len(), 5);

    // Reconnecting with an older version gets the current one straight away.
    let mut w2 = Watcher::connect(&p, "w2", v1).await?;
    assert_eq!(w2.next().await?.version, s.version);

    // A no-op write (failed validation) publishes nothing.
    let _ = a
        .create_provider(pb::CreateProviderRequest {
            provider: Some(provider("p5", "https://x/v1")),
        })
        .await;
    w.expect_quiet(Duration::from_millis(300)).await?;
    Ok(())
});

store_test!(burst_of_changes_ends_equal_to_db, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    add_provider(&mut a, "openai").await?;
    a.create_model(pb::CreateModelRequest {
        model: Some(model("gpt-4o")),
    })
    .await?;
    let mut w = Watcher::connect(&p, "burst", 0).await?;
    let first = w.next().await?;
    w.ack(&first).await?;
    let base = version(&mut a).await?;

    for i in 0..100u32 {
        let mut m = model("gpt-4o");
        m.description = format!("rev {i}");
        m.retry = Some(pb::RetryPolicy {
            max_retries: Some(i % 5),
            per_try_timeout_ms: u64::from(i),
        });
        a.update_model(pb::UpdateModelRequest {
            model: Some(m),
            update_mask: vec!["description".into(), "retry".into()],
        })
        .await?;
    }
    let final_version = version(&mut a).await?;
    assert_eq!(final_version, base + 100);

    // Bursts may be coalesced, never reordered or repeated.
    let mut prev = first.version;
    let last = loop {
        let s = w.next().await?;
        assert!(s.version > prev, "{} after {prev}", s.version);
        prev = s.version;
        w.ack(&s).await?;
        if s.version == final_version {
            break s;
        }
        assert!(s.version < final_version);
    };
    let exported = a
        .export(pb::ExportRequest {
            include_secrets: true,
        })
        .await?
        .into_inner();
    assert_eq!(exported.version, last.version);
    let doc = exported.document.unwrap();
    assert_eq!(last.models, doc.models);
    assert_eq!(last.providers, doc.providers);
    assert_eq!(last.models[0].description, "rev 99");

    // ListWorkers converges to the final version for this worker.
    wait_for("worker in sync", Duration::from_secs(10), || {
        let mut a = a.clone();
        async move {
            let st = a.get_status(pb::GetStatusRequest {}).await?.into_inner();
            Ok((st.version == final_version && st.workers_in_sync == 1).then_some(()))
        }
    })
    .await?;
    Ok(())
});

store_test!(workers_ack_and_nack, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    add_provider(&mut a, "p1").await?;
    let mut good = Watcher::connect(&p, "worker-good", 0).await?;
    let mut bad = Watcher::connect(&p, "worker-bad", 0).await?;
    let s1 = good.next().await?;
    good.ack(&s1).await?;
    let b1 = bad.next().await?;
    bad.ack(&b1).await?;
    add_provider(&mut a, "p2").await?;
    let s2 = good.next().await?;
    good.ack(&s2).await?;
    let b2 = bad.next().await?;
    bad.nack(b2.version, "unknown strategy in model x").await?;

    let workers = wait_for("acks recorded", Duration::from_secs(10), || {
        let mut a = a.clone();
        let want = s2.version;
        async move {
            let r = a.list_workers(pb::ListWorkersRequest {}).await?.into_inner();
            let done = r
                .workers
                .iter()
                .any(|w| w.worker_id == "worker-bad" && w.rejected_version == want)
                && r.workers
                    .iter()
                    .any(|w| w.worker_id == "worker-good" && w.applied_version == want);
            Ok(done.then_some(r))
        }
    })
    .await?;
    assert_eq!(workers.current_version, s2.version);
    let g = workers
        .workers
        .iter()
        .find(|w| w.worker_id == "worker-good")
        .unwrap();
    assert!(g.connected);
    assert_eq!(g.applied_hash, s2.hash);
    assert!(g.last_seen_ms > 0);
    assert_eq!(g.rejected_version, 0);
    let b = workers
        .workers
        .iter()
        .find(|w| w.worker_id == "worker-bad")
        .unwrap();
    assert_eq!(
        b.applied_version, s1.version,
        "a rejecting worker keeps its version"
    );
    assert_eq!(b.rejected_reason, "unknown strategy in model x");
    assert!(b.rejected_at_ms > 0);
    let st = a.get_status(pb::GetStatusRequest {}).await?.into_inner();
    assert_eq!(st.workers_connected, 2);
    assert_eq!(st.workers_in_sync, 1);

    // Disconnect shows up as connected = false.
    drop(bad);
    wait_for("disconnect seen", Duration::from_secs(10), || {
        let mut a = a.clone();
        async move {
            let r = a.list_workers(pb::ListWorkersRequest {}).await?.into_inner();
            Ok(r.workers
                .iter()
                .any(|w| w.worker_id == "worker-bad" && !w.connected)
                .then_some(()))
        }
    })
    .await?;
    Ok(())
});

store_test!(data_and_version_survive_restart, |db: TestDb| async move {
    let mut p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    add_provider(&mut a, "openai").await?;
    a.create_credential(pb::CreateCredentialRequest {
        credential: Some(credential("openai", "k1", "sk-persisted-secret-1")),
    })
    .await?;
    a.create_model(pb::CreateModelRequest {
        model: Some(model("gpt-4o")),
    })
    .await?;
    a.create_backend(pb::CreateBackendRequest {
        backend: Some(backend("gpt-4o", "openai")),
    })
    .await?;
    let before = a
        .export(pb::ExportRequest {
            include_secrets: true,
        })
        .await?
        .into_inner();
    let mut w = Watcher::connect(&p, "survivor", 0).await?;
    let s = w.next_at(before.version).await?;
    w.ack(&s).await?;

    // SIGTERM: exit 0, and the open watch stream ends cleanly (no error status).
    let status = p.terminate(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit status {status:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), w.rx.message()).await?;
    assert!(matches!(end, Ok(None)), "stream ended with {end:?}");

    let p2 = spawn_control(&db, &[]).await?;
    let mut a2 = admin(&p2).await?;
    let after = a2
        .export(pb::ExportRequest {
            include_secrets: true,
        })
        .await?
        .into_inner();
    assert_eq!(after.version, before.version);
    assert_eq!(after.document, before.document);
    let st = a2.get_status(pb::GetStatusRequest {}).await?.into_inner();
    assert_eq!(st.version, before.version);
    assert_eq!(st.snapshot_hash, s.hash, "same content, same hash after restart");
    // The worker's last state survived too.
    let ws = a2.list_workers(pb::ListWorkersRequest {}).await?.into_inner();
    let sv = ws.workers.iter().find(|w| w.worker_id == "survivor").unwrap();
    assert!(!sv.connected);
    assert_eq!(sv.applied_version, s.version);
    // The version keeps growing from where it was.
    add_provider(&mut a2, "second").await?;
    assert_eq!(version(&mut a2).await?, before.version + 1);
    Ok(())
});

#[tokio::test]
async fn refuses_public_listen_without_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = tokio::process::Command::new(bin_path("switchyard-control"))
        .args(["--grpc-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_WORKER_TOKEN")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Invalid configuration"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
    assert!(out.stdout.is_empty());

    let out = tokio::process::Command::new(bin_path("switchyard-control"))
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("SWITCHYARD_MASTER_KEY", "not-a-key")
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid configuration"));
    Ok(())
}

#[tokio::test]
async fn http_metrics_and_healthz() -> anyhow::Result<()> {
    let db = TestDb::new(switchyard_tests::DbKind::Sqlite).await?.unwrap();
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    add_provider(&mut a, "openai").await?;
    let base = p.url("http");
    let h = reqwest::get(format!("{base}/healthz")).await?;
    assert!(h.status().is_success());
    let body = wait_for("snapshot_version metric", Duration::from_secs(10), || {
        let base = base.clone();
        async move {
            let t = reqwest::get(format!("{base}/metrics")).await?.text().await?;
            Ok(t.contains("switchyard_control_snapshot_version 1").then_some(t))
        }
    })
    .await?;
    assert!(body.contains("switchyard_control_workers_connected"));
    assert!(body.contains("switchyard_control_db_transaction_seconds_bucket"));
    Ok(())
}
