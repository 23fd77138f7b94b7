//! Helpers shared by the control-plane integration tests: start the real
//! `switchyard-control` binary on a test database and talk to it over gRPC.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context, Result};
use futures::{channel::mpsc, SinkExt};
use switchyard_proto::v1::{self as pb, admin_client::AdminClient, worker_api_client::WorkerApiClient};
use switchyard_tests::{bin_path, Proc, TestDb};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel, Request, Status,
    Streaming,
};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123";
pub const WORKER_TOKEN: &str = "worker-token-for-tests-4567";

/// Adds `authorization: Bearer <token>` when a token is given.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;
pub type Worker = WorkerApiClient<InterceptedService<Channel, Bearer>>;

/// Start control on `db` with both tokens set; `extra_env` adds env vars (e.g. master key).
pub async fn spawn_control(db: &TestDb, extra_env: &[(&str, &str)]) -> Result<Proc> {
    let mut cmd = tokio::process::Command::new(bin_path("switchyard-control"));
    cmd.args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(db.dir.path().join("data"))
        .args(["--database-url", &db.url])
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
        .env_remove("SWITCHYARD_MASTER_KEY")
        .env("RUST_LOG", "info,sqlx=warn");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc::spawn("control", cmd).await
}

pub async fn channel(p: &Proc) -> Result<Channel> {
    Ok(Channel::from_shared(p.url("grpc"))?.connect().await?)
}

pub async fn admin(p: &Proc) -> Result<Admin> {
    admin_with(p, Some(ADMIN_TOKEN)).await
}

pub async fn admin_with(p: &Proc, token: Option<&str>) -> Result<Admin> {
    Ok(
        AdminClient::with_interceptor(channel(p).await?, Bearer(token.map(String::from)))
            .max_decoding_message_size(64 << 20),
    )
}

pub async fn worker_with(p: &Proc, token: Option<&str>) -> Result<Worker> {
    Ok(
        WorkerApiClient::with_interceptor(channel(p).await?, Bearer(token.map(String::from)))
            .max_decoding_message_size(64 << 20),
    )
}

pub fn provider(name: &str, url: &str) -> pb::Provider {
    pb::Provider {
        name: name.into(),
        kind: "openai".into(),
        base_url: url.into(),
        ..Default::default()
    }
}

pub fn credential(provider: &str, name: &str, secret: &str) -> pb::Credential {
    pb::Credential {
        provider: provider.into(),
        name: name.into(),
        secret: secret.into(),
        ..Default::default()
    }
}

pub fn model(name: &str) -> pb::Model {
    pb::Model {
        name: name.into(),
        ..Default::default()
    }
}

pub fn backend(model: &str, provider: &str) -> pb::Backend {
    pb::Backend {
        model: model.into(),
        provider: provider.into(),
        ..Default::default()
    }
}

/// Assert a gRPC error has `code` and its message contains every `needle`.
pub fn assert_status<T: std::fmt::Debug>(r: Result<T, Status>, code: tonic::Code, needles: &[&str]) {
    let e = r.expect_err("expected an error");
    assert_eq!(e.code(), code, "wrong code; message: {}", e.message());
    for n in needles {
        assert!(
            e.message().contains(n),
            "message {:?} does not mention {n:?}",
            e.message()
        );
    }
}

/// The committed config version (Export reads the DB; GetStatus shows the published
/// snapshot, which trails a commit by a moment).
pub async fn version(a: &mut Admin) -> Result<u64> {
    Ok(a.export(pb::ExportRequest::default()).await?.into_inner().version)
}

/// One worker's watch stream.
pub struct Watcher {
    pub tx: mpsc::Sender<pb::WatchRequest>,
    pub rx: Streaming<pb::Snapshot>,
}

pub fn hello(worker_id: &str, known_version: u64) -> pb::WatchRequest {
    pb::WatchRequest {
        msg: Some(pb::watch_request::Msg::Hello(pb::Hello {
            worker_id: worker_id.into(),
            known_version,
            ..Default::default()
        })),
    }
}

impl Watcher {
    pub async fn connect(p: &Proc, worker_id: &str, known_version: u64) -> Result<Watcher> {
        let mut w = worker_with(p, Some(WORKER_TOKEN)).await?;
        let (mut tx, rx) = mpsc::channel(16);
        tx.send(hello(worker_id, known_version)).await?;
        let stream = w.watch(rx).await?.into_inner();
        Ok(Watcher { tx, rx: stream })
    }

    /// Next snapshot (fails after 10 s or if the stream ends).
    pub async fn next(&mut self) -> Result<pb::Snapshot> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .context("no snapshot within 10s")??
            .context("watch stream ended")
    }

    /// Skip snapshots older than `version` (a commit is published a moment after it returns).
    pub async fn next_at(&mut self, version: u64) -> Result<pb::Snapshot> {
        loop {
            let s = self.next().await?;
            if s.version >= version {
                return Ok(s);
            }
        }
    }

    /// Nothing arrives within `d` (used only to check that no extra snapshot is sent).
    pub async fn expect_quiet(&mut self, d: Duration) -> Result<()> {
        match tokio::time::timeout(d, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(m) => anyhow::bail!("unexpected message: {:?}", m.map(|s| s.map(|s| s.version))),
        }
    }

    pub async fn ack(&mut self, s: &pb::Snapshot) -> Result<()> {
        self.tx
            .send(pb::WatchRequest {
                msg: Some(pb::watch_request::Msg::Ack(pb::Ack {
                    version: s.version,
                    hash: s.hash.clone(),
                })),
            })
            .await?;
        Ok(())
    }

    pub async fn nack(&mut self, version: u64, reason: &str) -> Result<()> {
        self.tx
            .send(pb::WatchRequest {
                msg: Some(pb::watch_request::Msg::Nack(pb::Nack {
                    version,
                    reason: reason.into(),
                })),
            })
            .await?;
        Ok(())
    }
}
