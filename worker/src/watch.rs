//! The config path: a `WorkerApi.Watch` client that says Hello, applies each snapshot
//! (Ack, or Nack and keep the previous one), and reconnects with exponential backoff and
//! jitter; plus the last-known-good state file (`<state-dir>/snapshot.pb`, mode 0600,
//! written atomically) that a worker serves from when it starts while control is down.
//! Given a key (`--state-key-file`), the file is sealed with AES-256-GCM (`StateKey`): it
//! holds every provider secret, and then only a process with the key reads them.
use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use prost::Message;
use rand::Rng;
use switchyard_proto as pb;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Secret, Shared};

pub const STATE_FILE: &str = "snapshot.pb";

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub control_url: String,
    pub worker_token: Option<Secret>,
    /// TLS to control (`https://` URLs).
    pub tls: pb::channel::ClientTls,
    pub worker_id: String,
    pub state_dir: Option<PathBuf>,
    /// Seals the state file (`None`: written in the clear, mode 0600).
    pub state_key: Option<StateKey>,
    pub advertise_address: String,
}

/// The key that seals the state file: 32 bytes, given as base64 or hex (like control's
/// master key). The file is then `SYSTATE1` ‖ 12-byte random nonce ‖ AES-256-GCM(snapshot),
/// the magic as associated data.
#[derive(Clone)]
pub struct StateKey([u8; 32]);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(…)")
    }
}

const SEALED_MAGIC: &[u8; 8] = b"SYSTATE1";

impl StateKey {
    /// Parse 32 bytes written as hex (64 digits) or base64 (standard, URL-safe, unpadded).
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine;
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                .ok()
        };
        bytes
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Self)
            .ok_or_else(|| "the state key must be 32 bytes, base64 or hex encoded".to_string())
    }

    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        use aes_gcm::{aead::Aead, Aes256Gcm, KeyInit, Nonce};
        let nonce: [u8; 12] = rand::random();
        let cipher = Aes256Gcm::new(&self.0.into());
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                aes_gcm::aead::Payload {
                    msg: plain,
                    aad: SEALED_MAGIC,
                },
            )
            // Only fails for inputs beyond 64 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(SEALED_MAGIC.len() + nonce.len() + ct.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        use aes_gcm::{aead::Aead, Aes256Gcm, KeyInit, Nonce};
        let rest = sealed.strip_prefix(SEALED_MAGIC.as_slice())?;
        if rest.len() < 12 {
            return None;
        }
        let (nonce, ct) = rest.split_at(12);
        Aes256Gcm::new(&self.0.into())
            .decrypt(
                Nonce::from_slice(nonce),
                aes_gcm::aead::Payload {
                    msg: ct,
                    aad: SEALED_MAGIC,
                },
            )
            .ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state file {path}: not a valid snapshot: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    /// Sealed, and the key given does not open it (or none was given).
    #[error("state file {path}: {msg}")]
    Key { path: PathBuf, msg: &'static str },
}

impl StateError {
    /// The file is sealed and cannot be opened with the key given: a setup error, unlike
    /// a missing or damaged file, which the worker can start without.
    pub fn is_key(&self) -> bool {
        matches!(self, Self::Key { .. })
    }
}

/// Read `<dir>/snapshot.pb` if it exists, opening it with `key` if it is sealed. A file
/// in the clear is read with a key given too (it is sealed at the next write).
pub fn load_state(dir: &Path, key: Option<&StateKey>) -> Result<Option<pb::Snapshot>, StateError> {
    let path = dir.join(STATE_FILE);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    let plain = if b.starts_with(SEALED_MAGIC) {
        let Some(key) = key else {
            return Err(StateError::Key {
                path,
                msg: "it is encrypted and no --state-key-file was given",
            });
        };
        key.open(&b).ok_or(StateError::Key {
            path: path.clone(),
            msg: "the state key does not open it (wrong --state-key-file, or the file was altered)",
        })?
    } else {
        b
    };
    pb::Snapshot::decode(plain.as_slice())
        .map(Some)
        .map_err(|source| StateError::Decode { path, source })
}

/// Write the snapshot atomically: temp file (0600) → fsync → rename → fsync dir; sealed
/// with `key` when one is given.
pub fn save_state(dir: &Path, snap: &pb::Snapshot, key: Option<&StateKey>) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: dir.join(STATE_FILE),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    let bytes = snap.encode_to_vec();
    let bytes = match key {
        Some(k) => k.seal(&bytes),
        None => bytes,
    };
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Run the watch client until `cancel` fires.
pub async fn run(shared: Arc<Shared>, cfg: WatchConfig, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    // Capped low: a config change made once control is back should not wait for a long
    // backoff (5 s + up to 2.5 s jitter); a reconnect attempt costs control one refused
    // or accepted HTTP/2 connection, cheap even for hundreds of workers.
    let max = Duration::from_secs(5);
    loop {
        let res = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session(&shared, &cfg) => r,
        };
        match res {
            Ok(()) => {
                info!("control stream ended; reconnecting");
                backoff = Duration::from_millis(200);
            }
            Err(SessionError { applied, msg }) => {
                if applied {
                    backoff = Duration::from_millis(200);
                }
                warn!(control = %cfg.control_url, error = %msg, retry_in_ms = backoff.as_millis() as u64, "control unreachable");
            }
        }
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

struct SessionError {
    applied: bool,
    msg: String,
}

async fn session(shared: &Arc<Shared>, cfg: &WatchConfig) -> Result<(), SessionError> {
    let mut applied = false;
    let e = |applied: bool| move |m: String| SessionError { applied, msg: m };
    let endpoint = pb::channel::endpoint(&cfg.control_url, &cfg.tls)
        .map_err(|x| e(false)(x.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|x| e(false)(error_chain(&x)))?;
    let mut client = pb::worker_api_client::WorkerApiClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(8);
    let (known_version, known_hash) = shared
        .routing
        .load()
        .as_ref()
        .map(|r| (r.version, r.hash.clone()))
        .unwrap_or_default();
    let hello = pb::WatchRequest {
        msg: Some(pb::watch_request::Msg::Hello(pb::Hello {
            worker_id: cfg.worker_id.clone(),
            known_version,
            known_hash,
            address: cfg.advertise_address.clone(),
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    };
    tx.send(hello).await.map_err(|x| e(false)(x.to_string()))?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = &cfg.worker_token {
        let v = format!("Bearer {}", t.expose())
            .parse()
            .map_err(|_| e(false)("worker token is not a valid header value".into()))?;
        req.metadata_mut().insert("authorization", v);
    }
    let mut stream = client
        .watch(req)
        .await
        .map_err(|x| e(false)(format!("{}: {}", x.code(), x.message())))?
        .into_inner();
    info!(control = %cfg.control_url, "connected to control");
    loop {
        let snap = match stream.message().await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(()),
            Err(x) => return Err(e(applied)(format!("{}: {}", x.code(), x.message()))),
        };
        let version = snap.version;
        let reply = match shared.apply(&snap) {
            Ok(()) => {
                applied = true;
                if let Some(dir) = &cfg.state_dir {
                    let dir = dir.clone();
                    let snap2 = snap.clone();
                    let key = cfg.state_key.clone();
                    let r = tokio::task::spawn_blocking(move || save_state(&dir, &snap2, key.as_ref())).await;
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => warn!(error = %err, "could not write the last-known-good snapshot"),
                        Err(err) => warn!(error = %err, "state writer failed"),
                    }
                }
                pb::watch_request::Msg::Ack(pb::Ack {
                    version,
                    hash: snap.hash.clone(),
                })
            }
            Err(err) => {
                warn!(version, error = %err, "rejected snapshot; keeping the previous one");
                pb::watch_request::Msg::Nack(pb::Nack {
                    version,
                    reason: err.to_string(),
                })
            }
        };
        if tx.send(pb::WatchRequest { msg: Some(reply) }).await.is_err() {
            return Err(e(applied)("control stream closed".into()));
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
