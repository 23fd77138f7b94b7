//! `WorkerApi`: the Watch stream (xDS-style: snapshot out, ACK/NACK back) with the
//! registry of workers it feeds, and the idempotent Report RPC.
use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use parking_lot::Mutex;
use switchyard_proto::v1::{self as pb, watch_request::Msg, worker_api_server::WorkerApi};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    limits::{self, Allocator},
    metrics::Metrics,
    snapshot::Published,
    store::{now_ms, Store},
};

/// What the control plane knows about one worker.
#[derive(Clone, Debug, Default)]
pub struct WorkerState {
    pub worker_id: String,
    pub address: String,
    pub software_version: String,
    pub applied_version: u64,
    pub applied_hash: String,
    pub last_seen_ms: i64,
    pub connected_at_ms: i64,
    pub rejected_version: u64,
    pub rejected_reason: String,
    pub rejected_at_ms: i64,
    /// Open watch streams (a reconnecting worker may briefly have two).
    pub connections: u32,
}

#[derive(Default)]
pub struct Registry {
    workers: Mutex<HashMap<String, WorkerState>>,
}

impl Registry {
    pub fn seed(&self, ws: Vec<WorkerState>) {
        let mut m = self.workers.lock();
        for w in ws {
            m.insert(w.worker_id.clone(), w);
        }
    }
    pub fn list(&self) -> Vec<WorkerState> {
        let mut v: Vec<_> = self.workers.lock().values().cloned().collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }
    fn update(&self, id: &str, f: impl FnOnce(&mut WorkerState)) -> WorkerState {
        let mut m = self.workers.lock();
        let w = m.entry(id.to_string()).or_insert_with(|| WorkerState {
            worker_id: id.to_string(),
            ..Default::default()
        });
        f(w);
        w.clone()
    }
}

pub struct WorkerSvc {
    pub store: Arc<Store>,
    pub snapshots: watch::Receiver<Arc<Published>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Allocator>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::Snapshot, Status>> + Send>>;

/// Worker ids are free-form but bounded, since they end up in the DB and in metrics.
fn valid_worker_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 200 && !id.chars().any(char::is_control)
}

#[tonic::async_trait]
impl WorkerApi for WorkerSvc {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let cert_identity = crate::tls::Peer::of(&req).identity;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 30s"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(Msg::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a watch stream must be Hello",
                ))
            }
        };
        if !valid_worker_id(&hello.worker_id) {
            return Err(Status::invalid_argument(
                "hello.worker_id must be 1..=200 printable characters",
            ));
        }
        // Under mTLS the certificate names the worker, whatever its Hello says.
        let id = match cert_identity {
            Some(c) if valid_worker_id(&c) => c,
            Some(_) => {
                return Err(Status::permission_denied(
                    "the client certificate names no usable worker id",
                ))
            }
            None => hello.worker_id.clone(),
        };
        let now = now_ms();
        let w = self.registry.update(&id, |w| {
            w.connections += 1;
            w.connected_at_ms = now;
            w.last_seen_ms = now;
            w.address = hello.address.clone();
            w.software_version = hello.software_version.clone();
            // A worker that restarts with a known version from its state file has applied it.
            if hello.known_version > 0 {
                w.applied_version = hello.known_version;
                w.applied_hash = hello.known_hash.clone();
            }
        });
        self.metrics.workers_connected.inc();
        if let Err(e) = self.store.save_worker(&w).await {
            tracing::warn!(worker = %id, error = %e, "saving worker state failed");
        }
        tracing::info!(worker = %id, known_version = hello.known_version, "worker connected");

        let (tx, rx) = mpsc::channel::<Result<pb::Snapshot, Status>>(1);
        let mut snaps = self.snapshots.clone();
        let cancel = self.cancel.clone();
        let registry = self.registry.clone();
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let mut last_sent = hello.known_version;
        self.tasks.spawn(async move {
            loop {
                let cur = snaps.borrow_and_update().clone();
                if cur.version > last_sent {
                    // Only this stream waits on a slow reader; the watch channel keeps
                    // the latest snapshot for everyone else.
                    tokio::select! {
                        r = tx.send(Ok(cur.snapshot.clone())) => if r.is_err() { break },
                        _ = cancel.cancelled() => break,
                    }
                    last_sent = cur.version;
                    continue;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tx.closed() => break,
                    r = snaps.changed() => if r.is_err() { break },
                    m = inbound.message() => match m {
                        Ok(Some(m)) => handle_reply(&id, m, &registry, &store, &metrics).await,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(worker = %id, error = %e, "watch stream error");
                            break;
                        }
                    },
                }
            }
            let w = registry.update(&id, |w| {
                w.connections = w.connections.saturating_sub(1);
                w.last_seen_ms = now_ms();
            });
            metrics.workers_connected.dec();
            if let Err(e) = store.save_worker(&w).await {
                tracing::warn!(worker = %id, error = %e, "saving worker state failed");
            }
            tracing::info!(worker = %id, "worker disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        let cert_identity = crate::tls::Peer::of(&req).identity;
        let mut req = req.into_inner();
        if let Some(id) = cert_identity {
            for u in &mut req.usage {
                u.worker_id.clone_from(&id);
            }
            for h in &mut req.health {
                h.worker_id.clone_from(&id);
            }
            req.worker_id = id;
        }
        let (us, ud, hs, hd) = self.store.report(&req).await?;
        self.metrics.report_batches.inc();
        self.metrics.report_usage_rows.inc_by(u64::from(us));
        self.metrics.report_health_rows.inc_by(u64::from(hs));
        if !req.worker_id.is_empty() {
            let now = now_ms();
            self.registry.update(&req.worker_id, |w| w.last_seen_ms = now);
        }
        Ok(Response::new(pb::ReportResponse {
            usage_stored: us,
            usage_duplicates: ud,
            health_stored: hs,
            health_duplicates: hd,
        }))
    }

    /// Authenticated like Report (the service's `WorkerAuth`); under mTLS the
    /// certificate names the worker. The allocator's lock is sync and held only while
    /// computing the grants; the ledger is written later by its own task.
    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let cert_identity = crate::tls::Peer::of(&req).identity;
        let req = req.into_inner();
        let worker_id = cert_identity.unwrap_or(req.worker_id);
        if !valid_worker_id(&worker_id) {
            return Err(Status::invalid_argument(
                "worker_id must be 1..=200 printable characters",
            ));
        }
        if !valid_worker_id(&req.instance_id) {
            return Err(Status::invalid_argument(
                "instance_id must be 1..=200 printable characters",
            ));
        }
        if req.claims.len() > limits::MAX_CLAIMS {
            return Err(Status::invalid_argument(format!(
                "claims: at most {} per call",
                limits::MAX_CLAIMS
            )));
        }
        let claims: Vec<limits::RawClaim> = req
            .claims
            .into_iter()
            .map(|c| limits::RawClaim {
                limit: c.limit,
                window_start_ms: c.window_start_ms,
                used: c.used,
                ceiling: c.ceiling,
                want: c.want,
                refused: c.refused,
            })
            .collect();
        let published = self.snapshots.borrow().clone();
        let now = now_ms();
        let grants = self
            .limits
            .lease(&published.limits, &worker_id, &req.instance_id, &claims, now);
        self.metrics.lease_calls.inc();
        self.registry.update(&worker_id, |w| w.last_seen_ms = now);
        Ok(Response::new(pb::LeaseResponse {
            grants: grants
                .into_iter()
                .map(|g| pb::LeaseGrant {
                    limit: g.limit,
                    window_start_ms: g.window_start_ms,
                    ceiling: g.ceiling,
                    fleet_used: g.fleet_used,
                    expires_at_ms: g.expires_at_ms,
                })
                .collect(),
        }))
    }
}

async fn handle_reply(id: &str, m: pb::WatchRequest, registry: &Registry, store: &Store, metrics: &Metrics) {
    let now = now_ms();
    let w = match m.msg {
        Some(Msg::Ack(a)) => {
            metrics.acks.inc();
            tracing::debug!(worker = %id, version = a.version, "snapshot acked");
            registry.update(id, |w| {
                w.applied_version = a.version;
                w.applied_hash = a.hash;
                w.last_seen_ms = now;
            })
        }
        Some(Msg::Nack(n)) => {
            metrics.nacks.inc();
            tracing::warn!(worker = %id, version = n.version, reason = %n.reason, "snapshot rejected");
            registry.update(id, |w| {
                w.rejected_version = n.version;
                w.rejected_reason = n.reason;
                w.rejected_at_ms = now;
                w.last_seen_ms = now;
            })
        }
        // A second Hello only refreshes liveness.
        Some(Msg::Hello(_)) | None => registry.update(id, |w| w.last_seen_ms = now),
    };
    if let Err(e) = store.save_worker(&w).await {
        tracing::warn!(worker = %id, error = %e, "saving worker state failed");
    }
}
