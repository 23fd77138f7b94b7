//! Helpers for worker integration tests: build `Snapshot`s, write them as the worker's
//! last-known-good state file, and start `switchyard-worker` processes.
use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};
use switchyard_proto as pb;
use tokio::process::Command;

use crate::{bin_path, Proc};

/// An OpenAI- or Anthropic-kind provider with credentials `(name, secret)`; active
/// health checks off (tests that want them set `health`).
pub fn provider(name: &str, kind: &str, base_url: &str, creds: &[(&str, &str)]) -> pb::Provider {
    pb::Provider {
        name: name.into(),
        kind: kind.into(),
        base_url: base_url.into(),
        health: Some(pb::HealthCheck {
            enabled: Some(false),
            ..Default::default()
        }),
        credentials: creds
            .iter()
            .map(|(n, s)| pb::Credential {
                provider: name.into(),
                name: (*n).into(),
                secret: (*s).into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A backend `(name, provider, upstream_model, weight, priority)`.
pub fn backend(name: &str, provider: &str, upstream: &str, weight: u32, priority: i32) -> pb::Backend {
    pb::Backend {
        name: name.into(),
        provider: provider.into(),
        upstream_model: upstream.into(),
        weight: Some(weight),
        priority: Some(priority),
        ..Default::default()
    }
}

pub fn model(name: &str, strategy: &str, backends: Vec<pb::Backend>) -> pb::Model {
    pb::Model {
        name: name.into(),
        strategy: strategy.into(),
        backends: backends
            .into_iter()
            .map(|mut b| {
                b.model = name.into();
                b
            })
            .collect(),
        ..Default::default()
    }
}

/// A client key with its plaintext hashed the way control stores it.
pub fn key(name: &str, plaintext: &str, allowed_models: &[&str]) -> pb::ApiKey {
    pb::ApiKey {
        id: format!("id-{name}"),
        name: name.into(),
        allowed_models: allowed_models.iter().map(|s| s.to_string()).collect(),
        enabled: Some(true),
        key_hash: hex::encode(Sha256::digest(plaintext.as_bytes())),
        ..Default::default()
    }
}

pub fn snapshot(
    version: u64,
    providers: Vec<pb::Provider>,
    models: Vec<pb::Model>,
    keys: Vec<pb::ApiKey>,
) -> pb::Snapshot {
    pb::Snapshot {
        version,
        hash: format!("test-{version}"),
        created_at_ms: 0,
        providers,
        models,
        keys,
        limits: vec![],
    }
}

/// Write `snap` where the worker looks for its last-known-good snapshot.
pub fn write_state(dir: &Path, snap: &pb::Snapshot) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("snapshot.pb"), prost::Message::encode_to_vec(snap))?;
    Ok(())
}

/// Start a worker on 127.0.0.1:0 with `state_dir` and control at `control` (use
/// `http://127.0.0.1:1` for "unreachable"); `extra` are more flags.
pub async fn start_worker(state_dir: &Path, control: &str, extra: &[&str]) -> Result<Proc> {
    let mut cmd = Command::new(bin_path("switchyard-worker"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--ops-listen")
        .arg("127.0.0.1:0")
        .arg("--control")
        .arg(control)
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("SWITCHYARD_TEST_WORKER_LOG").unwrap_or_else(|_| "info".into()),
        );
    Proc::spawn("worker", cmd).await
}

/// Start a worker that serves `snap` from its state dir, with control unreachable.
pub async fn start_with_snapshot(snap: &pb::Snapshot, extra: &[&str]) -> Result<(Proc, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    write_state(dir.path(), snap)?;
    let w = start_worker(dir.path(), "http://127.0.0.1:1", extra).await?;
    Ok((w, dir))
}
