//! Worker + control end to end: snapshots arrive through `WorkerApi.Watch`, a change made
//! through the Admin API is served, the worker keeps serving while control is down, and a
//! restarted worker serves from its state dir while control is still down.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::time::Duration;

use anyhow::Result;
use control_common::{admin, credential, provider, spawn_control, ADMIN_TOKEN, WORKER_TOKEN};
use serde_json::{json, Value};
use switchyard_mock::{MockOptions, MockServer};
use switchyard_proto::v1 as pb;
use switchyard_tests::{wait_for, worker::start_worker, DbKind, TestDb};

const KEY: &str = "sk-sy-control-e2e-key-0123456789";

async fn version_of(c: &reqwest::Client, base: &str) -> Option<u64> {
    let h: Value = c
        .get(format!("{base}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    h["version"].as_u64()
}

async fn served_by(c: &reqwest::Client, base: &str) -> Result<(u16, String)> {
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model":"m","messages":[{"role":"user","content":"hi"}]}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let name = r
        .headers()
        .get("x-mock-name")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Ok((status, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_follows_control_and_survives_it() -> Result<()> {
    let _ = ADMIN_TOKEN;
    let a_mock = MockServer::start(MockOptions {
        name: "a".into(),
        ..Default::default()
    })
    .await?;
    let b_mock = MockServer::start(MockOptions {
        name: "b".into(),
        ..Default::default()
    })
    .await?;
    let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
    let mut control = spawn_control(&db, &[]).await?;
    let mut adm = admin(&control).await?;
    // No active probes: the test counts the requests that reach each mock exactly, and a
    // probe (first one at a random point in the second after a snapshot) would land among them.
    let mut p = provider("p", &a_mock.openai_base());
    p.health = Some(pb::HealthCheck {
        enabled: Some(false),
        ..Default::default()
    });
    adm.create_provider(pb::CreateProviderRequest { provider: Some(p) })
        .await?;
    adm.create_credential(pb::CreateCredentialRequest {
        credential: Some(credential("p", "k1", "sk-up-1")),
    })
    .await?;
    adm.create_model(pb::CreateModelRequest {
        model: Some(pb::Model {
            name: "m".into(),
            ..Default::default()
        }),
    })
    .await?;
    adm.create_backend(pb::CreateBackendRequest {
        backend: Some(pb::Backend {
            model: "m".into(),
            provider: "p".into(),
            ..Default::default()
        }),
    })
    .await?;
    adm.create_api_key(pb::CreateApiKeyRequest {
        name: "e2e".into(),
        import_plaintext: KEY.into(),
        ..Default::default()
    })
    .await?;

    let state = tempfile::tempdir()?;
    let control_url = control.url("grpc");
    let mut worker = start_worker(state.path(), &control_url, &["--worker-token", WORKER_TOKEN]).await?;
    let base = worker.url("http");
    let c = reqwest::Client::new();
    wait_for(
        "worker gets its first snapshot",
        Duration::from_secs(15),
        || async { Ok(matches!(served_by(&c, &base).await?, (200, n) if n == "a").then_some(())) },
    )
    .await?;
    let ready = c.get(format!("{base}/ready")).send().await?.status();
    assert_eq!(ready, 200);

    // The state file is written with mode 0600.
    let file = state.path().join("snapshot.pb");
    wait_for("state file", Duration::from_secs(5), || async {
        Ok(file.exists().then_some(()))
    })
    .await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
    }

    // A change through control is served once applied.
    let before = version_of(&c, &base).await.unwrap();
    let mut p = provider("p", &b_mock.openai_base());
    p.name = "p".into();
    adm.update_provider(pb::UpdateProviderRequest {
        provider: Some(p),
        update_mask: vec!["base_url".into()],
    })
    .await?;
    wait_for("new version applied", Duration::from_secs(15), || async {
        Ok(version_of(&c, &base).await.filter(|v| *v > before))
    })
    .await?;
    assert_eq!(served_by(&c, &base).await?, (200, "b".to_string()));
    let b_before = b_mock.request_count();

    // Control goes away: the worker keeps serving.
    control.signal("KILL").await?;
    let _ = control.child.wait().await;
    for _ in 0..20 {
        assert_eq!(served_by(&c, &base).await?, (200, "b".to_string()));
    }
    assert_eq!(b_mock.request_count(), b_before + 20);

    // Restart the worker while control is still down: it serves from its state dir.
    worker.terminate(Duration::from_secs(10)).await?;
    let worker2 = start_worker(state.path(), &control_url, &["--worker-token", WORKER_TOKEN]).await?;
    let base2 = worker2.url("http");
    assert_eq!(c.get(format!("{base2}/ready")).send().await?.status(), 200);
    assert_eq!(served_by(&c, &base2).await?, (200, "b".to_string()));
    Ok(())
}
