//! Snapshots: an immutable, versioned view of the whole config that workers route by.
//! A builder task rebuilds after each commit (a burst of commits coalesces into one
//! build) and publishes through a `watch` channel: latest wins, and a slow watcher
//! never holds up the others.
use std::{sync::Arc, time::Duration};

use serde::Serialize;
use sha2::{Digest, Sha256};
use switchyard_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    convert::{self, Secrets},
    metrics::Metrics,
    model::{ApiKey, ConfigState},
    store::{now_ms, Store},
};

/// A published snapshot. Never mutated after publication.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub hash: String,
    pub snapshot: pb::Snapshot,
    /// The snapshot's limits in domain form, for the lease allocator and ListLimits.
    pub limits: std::collections::BTreeMap<String, crate::model::Limit>,
}

/// Keys that go into snapshots. Revoked, disabled and already-expired keys are left
/// out, so no worker can accept them; keys with a future expiry carry `expires_at_ms`
/// and workers must reject them once it has passed.
fn snapshot_keys(state: &ConfigState, now: i64) -> impl Iterator<Item = &ApiKey> {
    state.keys.values().filter(move |k| k.is_active(now))
}

/// Hex SHA-256 over a canonical encoding of the content (everything but version, hash
/// and creation time). Canonical JSON with sorted maps is used instead of the proto
/// encoding because prost encodes `map` fields in hash order, which differs between
/// processes; the same content must hash the same after a restart.
pub fn content_hash(state: &ConfigState, now: i64) -> String {
    #[derive(Serialize)]
    struct P<'a> {
        name: &'a str,
        spec: &'a crate::model::ProviderSpec,
        credentials: Vec<(&'a str, &'a str, &'a crate::model::CredentialSpec)>,
    }
    #[derive(Serialize)]
    struct M<'a> {
        name: &'a str,
        spec: &'a crate::model::ModelSpec,
        backends: Vec<(&'a str, &'a crate::model::BackendSpec)>,
    }
    #[derive(Serialize)]
    struct K<'a> {
        id: &'a str,
        name: &'a str,
        hash: &'a str,
        prefix: &'a str,
        spec: &'a crate::model::ApiKeySpec,
    }
    #[derive(Serialize)]
    struct All<'a> {
        providers: Vec<P<'a>>,
        models: Vec<M<'a>>,
        keys: Vec<K<'a>>,
        // Left out when empty, so a config without limits hashes as it did before them.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        limits: Vec<(&'a str, &'a crate::model::LimitSpec)>,
    }
    let all = All {
        providers: state
            .providers
            .values()
            .map(|p| P {
                name: &p.name,
                spec: &p.spec,
                credentials: p
                    .credentials
                    .values()
                    .map(|c| (c.name.as_str(), c.secret.expose(), &c.spec))
                    .collect(),
            })
            .collect(),
        models: state
            .models
            .values()
            .map(|m| M {
                name: &m.name,
                spec: &m.spec,
                backends: m.backends.values().map(|b| (b.name.as_str(), &b.spec)).collect(),
            })
            .collect(),
        keys: snapshot_keys(state, now)
            .map(|k| K {
                id: &k.id,
                name: &k.name,
                hash: &k.key_hash,
                prefix: &k.prefix,
                spec: &k.spec,
            })
            .collect(),
        limits: state
            .limits
            .values()
            .map(|l| (l.name.as_str(), &l.spec))
            .collect(),
    };
    let mut h = Sha256::new();
    // Serialising plain structs, strings and BTreeMaps cannot fail.
    if let Err(e) = serde_json::to_writer(HashWriter(&mut h), &all) {
        tracing::error!(error = %e, "hashing snapshot content failed");
    }
    hex::encode(h.finalize())
}

struct HashWriter<'a>(&'a mut Sha256);
impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Build the proto snapshot for `version` from a config (the real build path, also benched).
pub fn build(version: u64, state: &ConfigState) -> Published {
    let now = now_ms();
    let hash = content_hash(state, now);
    let snapshot = pb::Snapshot {
        version,
        hash: hash.clone(),
        created_at_ms: now,
        providers: state
            .providers
            .values()
            .map(|p| convert::provider_to_proto(p, Secrets::Clear))
            .collect(),
        models: state.models.values().map(convert::model_to_proto).collect(),
        keys: snapshot_keys(state, now)
            .map(|k| convert::key_to_proto(k, true))
            .collect(),
        limits: state.limits.values().map(convert::limit_to_proto).collect(),
    };
    Published {
        version,
        hash,
        snapshot,
        limits: state.limits.clone(),
    }
}

/// Rebuild after every commit until cancelled. Reads the DB (not the writer's memory)
/// so that what workers get is exactly what was committed.
pub async fn run_builder(
    store: Arc<Store>,
    tx: watch::Sender<Arc<Published>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut commits = store.subscribe_commits();
    loop {
        let published = tx.borrow().version;
        let committed = *commits.borrow_and_update();
        if committed > published {
            match store.load_consistent().await {
                Ok((version, state)) => {
                    let p = build(version, &state);
                    tracing::debug!(version, hash = %p.hash, "snapshot published");
                    metrics
                        .snapshot_version
                        .set(i64::try_from(version).unwrap_or(i64::MAX));
                    metrics.snapshots_built.inc();
                    tx.send_replace(Arc::new(p));
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "building snapshot failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = commits.changed() => if r.is_err() { return },
        }
    }
}
