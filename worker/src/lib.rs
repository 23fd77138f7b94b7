//! Switchyard worker: the stateless data plane. Proxies OpenAI- and Anthropic-format
//! traffic to upstream providers using the latest snapshot from the control plane.
//!
//! Request path: `proxy` runs it as named phases over one per-request context
//! (`proxy::Ctx`; the table of phases and their files is in `proxy`'s docs): request
//! filter (`auth`, `paths`, `extract`) → route (`balance`: tier → strategy/affinity →
//! backend → credential, `balance::RetryBudget`) → upstream request → attempt (`upstream`)
//! → classify and record → response head → body (`relay`: frame by frame, timeouts, error
//! events, the stream transform, usage via `account`) → logging (`relay::Finish`, `metrics`).
//! Around them: `convert` (proto snapshot → routing table), `watch` (control
//! client and last-known-good file, sealed under a state key), `health` (active probes
//! and `GET /health`), `ops` (the ops listener: detailed `/health`, `/metrics`),
//! `errors` (the dialect error mapping), `server` (accept loop and graceful drain),
//! `trace` (a sampled request's spans, built when it settles).
//! `translate` holds the OpenAI ⇄ Anthropic translators, not yet on the request path.
//!
//! Embedding: `start(Config)` binds, loads the state file, starts the watch client and
//! returns a `Running`; no global state and no tracing initialisation here.
pub mod accesslog;
pub mod account;
pub mod auth;
pub mod balance;
pub mod body;
mod bytescan;
pub mod config;
pub mod convert;
pub mod errors;
pub mod extract;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod journal;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod paths;
pub mod proxy;
pub mod relay;
pub mod report;
pub mod respid;
pub mod server;
pub mod strip;
pub mod toplevel;
pub mod trace;
pub mod translate;
pub mod upstream;
pub mod watch;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

pub use account::{UsageEvent, UsageSink};
pub use balance::BreakerConfig;

/// A secret string whose `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Worker settings (the binary fills them from flags and env).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The ops listener (`ops`: detailed `/health`, `/metrics`); `None`: none.
    pub ops_listen: Option<SocketAddr>,
    /// Control plane gRPC URL; `None` runs from the state file only.
    pub control_url: Option<String>,
    pub worker_token: Option<Secret>,
    /// TLS to control: CA file and client certificate (`https://` control URLs).
    pub control_tls: switchyard_proto::channel::ClientTls,
    pub worker_id: String,
    /// Where the last-known-good snapshot is kept; `None` disables it.
    pub state_dir: Option<PathBuf>,
    /// Seals that snapshot (AES-256-GCM); `None`: it is written in the clear, mode 0600.
    pub state_key: Option<watch::StateKey>,
    pub drain_timeout: Duration,
    /// How long a client connection may wait to send a complete request head, idle
    /// keep-alive included, before it is closed (`server::Conns`): from this to 1.5× this.
    pub header_timeout: Duration,
    pub max_body_bytes: usize,
    /// Deadline and minimum rate of a request body's arrival (`body::read_body`): 60 s,
    /// and 1024 B/s on average once 10 s have passed. Too late or too slow: 408, and the
    /// connection is closed.
    pub body_limits: body::BodyLimits,
    /// How long a client may leave a response unread (its socket's send buffer full, the
    /// write pending) before its connection is closed and the request booked as
    /// `client_aborted` (`server::Conns`, like nginx's `send_timeout`): from this to 1.5×
    /// this. Default 60 s.
    pub send_timeout: Duration,
    /// The longest cool-down an upstream `Retry-After` can put on a credential. Default
    /// 10 minutes.
    pub retry_after_cap: Duration,
    /// How long a request refused only for this worker's spent slice of a limit waits
    /// for the next grant (`limits::wait_for_grant`). Default 250 ms; 0 refuses at once.
    pub limit_wait: Duration,
    /// How much of an upstream answer is still read, for its usage, after its client went
    /// away (`relay::AbortDrain`). Default 10 s and 1 MiB.
    pub abort_drain: relay::AbortDrain,
    pub breaker: BreakerConfig,
    /// Receives one `UsageEvent` per finished request (must not block).
    pub usage_sink: Option<Arc<dyn UsageSink>>,
    /// Receives every health transition (must not block).
    pub health_sink: Option<Arc<dyn account::HealthSink>>,
    /// Receives the per-request access log line (must not block); `None`: no access log.
    pub access_log: Option<AccessLog>,
    /// Trace export (`trace`, `switchyard_otel`); `None`: off (the binary reads the
    /// `OTEL_*` environment variables).
    pub traces: Option<switchyard_otel::Settings>,
}

/// Where the per-request access log line goes (the binary: `accesslog::spawn`). The line
/// is formatted by `relay` without the log subscriber's generic field machinery, which
/// cost more than proxying the request.
#[derive(Clone)]
pub struct AccessLog(Arc<WriteLine>);

type WriteLine = dyn Fn(&[u8]) + Send + Sync;

impl AccessLog {
    pub fn new(write: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        Self(Arc::new(write))
    }
    pub fn write(&self, line: &[u8]) {
        (self.0)(line)
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl Config {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            ops_listen: None,
            control_url: None,
            worker_token: None,
            control_tls: Default::default(),
            worker_id: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            state_dir: None,
            state_key: None,
            drain_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            max_body_bytes: 32 * 1024 * 1024,
            body_limits: body::BodyLimits::default(),
            send_timeout: Duration::from_secs(60),
            retry_after_cap: Duration::from_secs(600),
            limit_wait: Duration::from_millis(250),
            abort_drain: relay::AbortDrain::default(),
            breaker: BreakerConfig::default(),
            usage_sink: None,
            health_sink: None,
            access_log: None,
            traces: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] watch::StateError),
    #[error("TLS client setup: {0}")]
    Tls(rustls::Error),
    #[error("traces: {0}")]
    Traces(#[from] switchyard_otel::Error),
}

/// The monotonic millisecond clock every `balance` call is given (`balance::now_ms`).
#[derive(Debug)]
pub struct Clock {
    _private: (),
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        balance::now_ms()
    }
}

/// A v7 UUID from a per-thread generator. `Uuid::now_v7` asks the kernel for randomness
/// on every call (a `getrandom` syscall), which the request path cannot afford.
pub fn fast_uuid_v7() -> uuid::Uuid {
    fast_uuid_v7_at(unix_ms())
}

thread_local! {
    /// The state of [`id_bits`]' generator (wyrand), seeded from the OS-seeded `ThreadRng`
    /// once per thread.
    static ID_RNG: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
}

/// 128 bits for an id's random part: wyrand, two steps. Ids must be unique, not
/// unpredictable (a request id is the client's to choose anyway; a usage record's id is
/// control's dedupe key, never a secret): its state is a Weyl sequence, so a thread's
/// states never repeat within 2^64 steps, and the 74 bits a v7 UUID keeps of two
/// outputs make a collision between two ids of one millisecond as unlikely as with a
/// cryptographic generator. `rand::random` (ChaCha12) cost ~200 instructions an id.
fn id_bits() -> u128 {
    ID_RNG.with(|s| {
        let next = || {
            let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
            s.set(x);
            let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
            ((t >> 64) as u64) ^ (t as u64)
        };
        (u128::from(next()) << 64) | u128::from(next())
    })
}

/// [`fast_uuid_v7`] for the Unix ms `ms` (a time the caller already read).
pub fn fast_uuid_v7_at(ms: i64) -> uuid::Uuid {
    let ms = ms.max(0) as u64;
    let r = id_bits().to_le_bytes();
    let mut rnd = [0u8; 10];
    rnd.copy_from_slice(&r[..10]);
    uuid::Builder::from_unix_timestamp_millis(ms, &rnd).into_uuid()
}

/// `fast_uuid_v7` as a hyphenated string, in one exact allocation.
pub fn fast_uuid_v7_string() -> String {
    let mut buf = [0u8; 36];
    hyphenated(&fast_uuid_v7(), &mut buf).to_owned()
}

/// `u` in its hyphenated lower-case form (`Uuid::hyphenated().encode_lower`'s text), in
/// `buf`: one table read per byte (uuid's own formatter cost ~250 instructions, twice a
/// request).
pub fn hyphenated<'a>(u: &uuid::Uuid, buf: &'a mut [u8; 36]) -> &'a str {
    // Hex digits and hyphens only.
    std::str::from_utf8(hyphenated_bytes(u, buf)).unwrap_or_default()
}

/// [`hyphenated`] as bytes (for a writer of bytes: no UTF-8 check).
pub fn hyphenated_bytes<'a>(u: &uuid::Uuid, buf: &'a mut [u8; 36]) -> &'a [u8; 36] {
    const HEX: [[u8; 2]; 256] = {
        let digits = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [digits[i >> 4], digits[i & 15]];
            i += 1;
        }
        t
    };
    let b = u.as_bytes();
    // Byte groups 4-2-2-2-6, each at its place in the text.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (i, &x) in b.iter().enumerate() {
        let [hi, lo] = HEX[x as usize];
        buf[AT[i]] = hi;
        buf[AT[i] + 1] = lo;
    }
    for p in [8, 13, 18, 23] {
        buf[p] = b'-';
    }
    buf
}

/// Unix epoch milliseconds (key expiry, timestamps).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// State shared by every connection and background task of one worker.
#[derive(Debug)]
pub struct Shared {
    pub routing: ArcSwapOption<config::Routing>,
    pub clock: Clock,
    pub budget: balance::RetryBudget,
    pub metrics: metrics::Metrics,
    pub usage_sink: Option<Arc<dyn UsageSink>>,
    pub health_sink: Option<Arc<dyn account::HealthSink>>,
    pub access_log: Option<AccessLog>,
    /// Where sampled requests' spans go (`trace`); `None`: tracing is off.
    pub tracer: Option<Arc<switchyard_otel::Tracer>>,
    pub max_body_bytes: usize,
    /// Limits on a request body's arrival, for `body::read_body`.
    pub body_limits: body::BodyLimits,
    /// Cap on the cool-down from an upstream `Retry-After`.
    pub retry_after_cap: Duration,
    /// See [`Config::limit_wait`].
    pub limit_wait: Duration,
    pub abort_drain: relay::AbortDrain,
    /// The abort drains in progress (`relay::AbortDrain`), waited for on shutdown...
    pub drains: TaskTracker,
    /// ...once this told them to book what they have.
    pub drain_stop: CancellationToken,
    pub worker_id: String,
    pub tasks: TaskTracker,
    /// Wakes the reporter from its quiet sleep (health flips, snapshot swaps; the usage
    /// queue pokes it too). Nobody waits on it without a reporter.
    activity: Arc<tokio::sync::Notify>,
    /// Wakes the lease task (`lease`): a snapshot with limits, a slice running low.
    pub lease_wake: tokio::sync::Notify,
    /// Wakes the requests waiting for a grant (`limits::wait_for_grant`): the lease task
    /// applied an answer.
    pub lease_granted: tokio::sync::Notify,
    connector: upstream::Connector,
    breaker: BreakerConfig,
    draining: AtomicBool,
    /// Cancels the probe tasks of the current snapshot.
    probes: Mutex<Option<CancellationToken>>,
    shutdown: CancellationToken,
}

impl Shared {
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// What limit admission needs: the refusal metrics and the lease task's wake-up.
    pub fn limit_env(&self) -> limits::Env<'_> {
        limits::Env {
            metrics: Some(&self.metrics),
            wake: Some(&self.lease_wake),
            // A request that may wait for a grant is counted once it is finally refused.
            count_slice: self.limit_wait.is_zero(),
        }
    }

    /// Log a health flip (warn) and hand it to the health sink. `target` is built only
    /// when there is a transition, so the common path allocates nothing.
    pub fn transition(&self, t: Option<balance::Transition>, target: impl FnOnce() -> account::HealthTarget) {
        let Some(t) = t else { return };
        self.activity.notify_one();
        let target = target();
        warn!(
            kind = target.kind,
            model = %target.model,
            backend = %target.backend,
            provider = %target.provider,
            credential = %target.credential,
            healthy = t.healthy,
            reason = %t.reason,
            "health changed"
        );
        if let Some(sink) = &self.health_sink {
            sink.record(account::HealthEvent {
                ts_ms: unix_ms(),
                target,
                healthy: t.healthy,
                reason: t.reason,
            });
        }
    }

    /// Validate and build `snap` fully, then swap it in (infallible) and restart probes.
    pub fn apply(self: &Arc<Self>, snap: &switchyard_proto::Snapshot) -> Result<(), convert::ConvertError> {
        let prev = self.routing.load_full();
        if let Some(p) = &prev {
            if p.version == snap.version && p.hash == snap.hash && !snap.hash.is_empty() {
                return Ok(());
            }
        }
        let states = prev.as_ref().map(|p| p.states()).unwrap_or_default();
        let routing = Arc::new(convert::build(snap, &states, &self.connector, self.breaker)?);
        self.routing.store(Some(routing.clone()));
        self.activity.notify_one();
        if !routing.limits.is_empty() {
            self.lease_wake.notify_one();
        }
        let token = self.shutdown.child_token();
        if let Some(old) = self.probes.lock().replace(token.clone()) {
            old.cancel();
        }
        health::spawn_probes(self, &routing, token);
        info!(version = snap.version, hash = %snap.hash, models = routing.models.len(), "config applied");
        Ok(())
    }
}

/// A started worker.
#[derive(Debug)]
pub struct Running {
    http_addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop_accept: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the ops listener is bound, if there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful drain: `/ready` → 503, stop accepting, let in-flight requests and
    /// streams finish (up to the drain timeout), stop background tasks, return.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.stop_accept.cancel();
        let _ = self.server.await;
        // Abort drains book what they read before the reporter's last flush.
        self.shared.drain_stop.cancel();
        self.shared.drains.close();
        self.shared.drains.wait().await;
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Wait until the server stops on its own (it does not, unless shut down).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Bind, load the last-known-good snapshot, start the control watch, and serve.
pub async fn start(cfg: Config) -> Result<Running, Error> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: cfg.listen,
        source,
    })?;
    let ops_listener = match cfg.ops_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?,
        ),
    };
    let ops_addr = match &ops_listener {
        None => None,
        Some(l) => Some(l.local_addr().map_err(|source| Error::Bind {
            addr: cfg.ops_listen.unwrap_or(cfg.listen),
            source,
        })?),
    };
    let shutdown = CancellationToken::new();
    let metrics = metrics::Metrics::new();
    // Reporting to control: unless the embedder brought its own sink, usage goes into
    // the reporter's bounded queue (the hot path only pushes). Health flips are
    // sampled by the reporter itself (see `report`).
    let mut reporter = None;
    let mut activity = Arc::new(tokio::sync::Notify::new());
    let mut usage_sink = cfg.usage_sink.clone();
    if let (None, Some(url)) = (&usage_sink, &cfg.control_url) {
        let mut rc = report::ReportConfig::new(url.clone(), cfg.worker_id.clone());
        rc.worker_token = cfg.worker_token.clone();
        rc.tls = cfg.control_tls.clone();
        rc.state_dir = cfg.state_dir.clone();
        rc.shutdown_budget = cfg.drain_timeout;
        // With a state dir, finished requests are journaled (`journal`) before the queue.
        let (sink, rx) = match &rc.state_dir {
            Some(dir) => report::ReportSink::journaled(
                &rc,
                dir,
                metrics.usage_dropped.clone(),
                metrics.usage_journal_fallback.clone(),
            ),
            None => report::ReportSink::new(rc.queue, metrics.usage_dropped.clone()),
        };
        usage_sink = Some(sink);
        activity = rx.activity();
        reporter = Some((rc, rx));
    }
    let tasks = TaskTracker::new();
    let tracer = match &cfg.traces {
        None => None,
        Some(s) => Some(switchyard_otel::start(
            s,
            "switchyard-worker",
            &cfg.worker_id,
            metrics.traces.clone(),
            &tasks,
            shutdown.child_token(),
        )?),
    };
    let shared = Arc::new(Shared {
        routing: ArcSwapOption::empty(),
        clock: Clock { _private: () },
        budget: balance::RetryBudget::default(),
        metrics,
        usage_sink,
        health_sink: cfg.health_sink.clone(),
        access_log: cfg.access_log.clone(),
        tracer,
        max_body_bytes: cfg.max_body_bytes,
        body_limits: cfg.body_limits,
        retry_after_cap: cfg.retry_after_cap,
        limit_wait: cfg.limit_wait,
        abort_drain: cfg.abort_drain,
        drains: TaskTracker::new(),
        drain_stop: CancellationToken::new(),
        worker_id: cfg.worker_id.clone(),
        tasks,
        activity,
        lease_wake: tokio::sync::Notify::new(),
        lease_granted: tokio::sync::Notify::new(),
        connector: upstream::Connector::new().map_err(Error::Tls)?,
        breaker: cfg.breaker,
        draining: AtomicBool::new(false),
        probes: Mutex::new(None),
        shutdown: shutdown.clone(),
    });
    if let Some(dir) = &cfg.state_dir {
        match watch::load_state(dir, cfg.state_key.as_ref()) {
            Ok(Some(snap)) => match shared.apply(&snap) {
                Ok(()) => info!(version = snap.version, "serving the last-known-good snapshot"),
                Err(e) => warn!(error = %e, "last-known-good snapshot is invalid; ignoring it"),
            },
            Ok(None) => {}
            // A sealed file the key does not open is a setup error: starting without it
            // would silently drop the fallback that serves while control is down.
            Err(e) if e.is_key() => {
                // The tasks started so far (trace export, probes) stop with the worker
                // that never was: an embedder's failed `start` leaves nothing running.
                shutdown.cancel();
                return Err(Error::State(e));
            }
            Err(e) => warn!(error = %e, "could not read the last-known-good snapshot"),
        }
    }
    if let Some(url) = &cfg.control_url {
        let wc = watch::WatchConfig {
            control_url: url.clone(),
            worker_token: cfg.worker_token.clone(),
            tls: cfg.control_tls.clone(),
            worker_id: cfg.worker_id.clone(),
            state_dir: cfg.state_dir.clone(),
            state_key: cfg.state_key.clone(),
            advertise_address: http_addr.to_string(),
        };
        let s = shared.clone();
        let c = shutdown.child_token();
        shared.tasks.spawn(async move { watch::run(s, wc, c).await });
    }
    if let Some(url) = &cfg.control_url {
        let lc = lease::LeaseConfig {
            control_url: url.clone(),
            worker_token: cfg.worker_token.clone(),
            tls: cfg.control_tls.clone(),
            worker_id: cfg.worker_id.clone(),
            // New per start: control keeps consumption per instance.
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        let s = shared.clone();
        let c = shutdown.child_token();
        shared.tasks.spawn(async move { lease::run(s, lc, c).await });
    }
    if let Some((rc, rx)) = reporter {
        let s = shared.clone();
        let dropped = shared.metrics.usage_dropped.clone();
        let c = shutdown.child_token();
        shared
            .tasks
            .spawn(async move { report::run(s, rc, rx, dropped, c).await });
    }
    if let Some(l) = ops_listener {
        // Stopped with the other background tasks, after the client connections drained:
        // scrapers see the drain.
        let s = shared.clone();
        let c = shutdown.child_token();
        shared.tasks.spawn(async move { ops::serve(l, s, c).await });
    }
    let stop_accept = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        shared.clone(),
        stop_accept.clone(),
        cfg.drain_timeout,
        server::Limits {
            header: cfg.header_timeout,
            send: cfg.send_timeout,
        },
    ));
    Ok(Running {
        http_addr,
        ops_addr,
        shared,
        stop_accept,
        server,
    })
}

#[cfg(test)]
mod id_tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hyphenated_is_uuids_own_text(bits in any::<u128>()) {
            let u = uuid::Uuid::from_u128(bits);
            let mut buf = [0u8; 36];
            prop_assert_eq!(super::hyphenated(&u, &mut buf), u.hyphenated().to_string());
        }
    }

    #[test]
    fn fast_v7_ids_are_v7_of_their_time_and_distinct() {
        let ms = 1_796_504_967_123;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let u = super::fast_uuid_v7_at(ms);
            assert_eq!(u.get_version_num(), 7);
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), ms as u64);
            assert!(seen.insert(u), "a repeated id");
        }
    }
}
