//! Switchyard control plane: the config store (SQLite or Postgres), the Admin and
//! WorkerApi gRPC services, snapshot publishing, and `/metrics`.
//!
//! Entry point: [`start`] binds everything and returns a [`Running`] handle. It keeps
//! no process-global state (no tracing init, no signal handlers), so `switchyard up`
//! can run it in-process beside a worker.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use switchyard_proto::v1::{admin_server::AdminServer, worker_api_server::WorkerApiServer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub mod admin;
pub mod apply;
pub mod auth;
pub mod console;
pub mod convert;
pub mod crypto;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod secret;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod usage;
pub mod watch;

pub use crypto::MasterKey;
pub use secret::Secret;

/// Largest gRPC message accepted (Apply documents of a big config).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("secret storage: {0}")]
    Crypto(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            other => {
                tracing::error!(error = %other, "request failed");
                Status::internal(other.to_string())
            }
        }
    }
}

/// Everything `start` needs. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// `sqlite:...` or `postgres://...`; `None` = `<data_dir>/switchyard.db`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub grpc_listen: SocketAddr,
    /// `/healthz` and `/metrics`; `None` disables the HTTP listener.
    pub http_listen: Option<SocketAddr>,
    pub admin_token: Option<Secret>,
    pub worker_token: Option<Secret>,
    /// Allow listening on a non-loopback address without tokens, and streaming
    /// snapshots over plaintext to non-loopback workers.
    pub insecure: bool,
    /// Serve the gRPC API over TLS (and require client certificates when it names a
    /// client CA).
    pub tls: Option<tls::TlsFiles>,
    /// Encrypts credential secrets at rest when set.
    pub master_key: Option<MasterKey>,
    /// Earlier keys, to decrypt (and re-encrypt at start) secrets after a rotation.
    pub old_master_keys: Vec<MasterKey>,
    /// Raw usage records older than this are rolled up into hourly aggregates;
    /// `None` keeps raw records forever.
    pub usage_retention: Option<std::time::Duration>,
    /// Trace export of the Admin RPCs (`switchyard_otel`); `None`: off (the binary
    /// reads the `OTEL_*` environment variables).
    pub traces: Option<switchyard_otel::Settings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: None,
            data_dir: PathBuf::from("./switchyard-data"),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            admin_token: None,
            worker_token: None,
            insecure: false,
            tls: None,
            master_key: None,
            old_master_keys: Vec::new(),
            usage_retention: Some(std::time::Duration::from_secs(30 * 24 * 3600)),
            traces: None,
        }
    }
}

impl Config {
    fn validate(&self) -> Result<(), Error> {
        if !self.grpc_listen.ip().is_loopback() && !self.insecure {
            let mut missing = Vec::new();
            if self.admin_token.is_none() {
                missing.push("admin token (SWITCHYARD_ADMIN_TOKEN)");
            }
            // Under mTLS a worker's certificate is its credential.
            let mtls = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            if self.worker_token.is_none() && !mtls {
                missing.push("worker token (SWITCHYARD_WORKER_TOKEN)");
            }
            if !missing.is_empty() {
                return Err(Error::Config(format!(
                    "refusing to listen on non-loopback {} without {}; set them or pass --insecure",
                    self.grpc_listen,
                    missing.join(" and ")
                )));
            }
        }
        for t in [&self.admin_token, &self.worker_token].into_iter().flatten() {
            if t.is_empty() {
                return Err(Error::Config("tokens must not be empty".into()));
            }
        }
        Ok(())
    }
}

/// A running control plane.
pub struct Running {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    store: Arc<store::Store>,
}

impl Running {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }
    /// Wait until the control plane stops (after [`Running::shutdown`] from a clone of
    /// the token, or because a server failed).
    pub async fn wait(&self) {
        self.cancel.cancelled().await;
        self.tasks.wait().await;
    }
    /// A token that stops the control plane when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
    /// Graceful stop: watch streams end cleanly, in-flight RPCs finish, the pool closes.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.wait().await;
        self.store.close().await;
    }
}

/// Open the store, build the first snapshot, bind the listeners and serve.
pub async fn start(cfg: Config) -> Result<Running, Error> {
    cfg.validate()?;
    let started_at_ms = store::now_ms();
    let metrics = Arc::new(metrics::Metrics::new());
    let keyring = crypto::Keyring::new(cfg.master_key.clone(), cfg.old_master_keys.clone());
    if !keyring.encrypts() {
        tracing::warn!("SWITCHYARD_MASTER_KEY is not set: credential secrets are stored in plaintext");
    }
    let store = Arc::new(
        store::Store::open(
            cfg.database_url.as_deref(),
            &cfg.data_dir,
            keyring,
            metrics.clone(),
        )
        .await?,
    );
    // Fail at start (not at the first snapshot) if stored secrets cannot be read.
    let (version, state) = store.load_consistent().await?;
    let first = snapshot::build(version, &state);
    metrics
        .snapshot_version
        .set(i64::try_from(version).unwrap_or(i64::MAX));
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(first));

    let registry = Arc::new(watch::Registry::default());
    registry.seed(store.load_workers().await?);

    // Limits: the lease allocator starts from the ledger of the current windows (the
    // earliest a current window can start is the 1st of this month).
    let allocator = Arc::new(limits::Allocator::default());
    let month_start = switchyard_common::window::Window::Month.start_ms(started_at_ms);
    let loaded = allocator.load(
        &state.limits,
        store.load_ledger(month_start).await?,
        started_at_ms,
    );
    if loaded > 0 {
        tracing::info!(rows = loaded, "limit ledger loaded");
    }

    let tls = cfg.tls.as_ref().map(tls::server_config).transpose()?;
    let transport = match &cfg.tls {
        None => "plaintext",
        Some(t) if t.client_ca.is_some() => "mtls",
        Some(_) => "tls",
    };
    if cfg.insecure {
        tracing::warn!(
            "--insecure: control accepts clients without tokens on any address and streams snapshots \
             (provider secrets included) over plaintext to non-loopback workers"
        );
    }
    let grpc = TcpListener::bind(cfg.grpc_listen).await?;
    let grpc_addr = grpc.local_addr()?;
    let http = match cfg.http_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;

    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();

    tasks.spawn(snapshot::run_builder(
        store.clone(),
        snap_tx,
        metrics.clone(),
        cancel.clone(),
    ));

    if let Some(retention) = cfg.usage_retention {
        tasks.spawn(usage::run_retention(
            store.pool().clone(),
            retention,
            // Often enough that the raw table never holds much more than the retention.
            (retention / 24).clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(3600),
            ),
            metrics.clone(),
            cancel.clone(),
        ));
    }

    tasks.spawn(limits::run_ledger(
        store.clone(),
        allocator.clone(),
        std::time::Duration::from_secs(1),
        cancel.clone(),
    ));

    let admin = admin::AdminSvc {
        store: store.clone(),
        snapshots: snap_rx.clone(),
        registry: registry.clone(),
        limits: allocator.clone(),
        started_at_ms,
        transport,
        insecure: cfg.insecure,
    };
    let console = Arc::new(console::Console::new(
        store.clone(),
        snap_rx.clone(),
        registry.clone(),
        cfg.admin_token.as_ref(),
    ));
    let worker = watch::WorkerSvc {
        store: store.clone(),
        snapshots: snap_rx,
        registry,
        metrics: metrics.clone(),
        limits: allocator,
        cancel: cancel.clone(),
        tasks: tasks.clone(),
    };
    // Admin RPCs get a server span each when traces are on (the worker RPCs are
    // long-lived streams or the workers' own background calls: not traced).
    let tracer = match &cfg.traces {
        None => None,
        Some(s) => Some(
            switchyard_otel::start(
                s,
                "switchyard-control",
                &grpc_addr.to_string(),
                metrics.traces.clone(),
                &tasks,
                cancel.clone(),
            )
            .map_err(|e| Error::Config(e.to_string()))?,
        ),
    };
    let (health_reporter, health_svc) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<admin::AdminSvc>>()
        .await;
    health_reporter
        .set_serving::<WorkerApiServer<watch::WorkerSvc>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchyard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchyard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    let admin_svc = tonic::service::interceptor::InterceptedService::new(
        AdminServer::new(admin)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        auth::BearerAuth::new(cfg.admin_token.as_ref(), "admin"),
    );
    let worker_svc = tonic::service::interceptor::InterceptedService::new(
        WorkerApiServer::new(worker)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        auth::WorkerAuth {
            bearer: auth::BearerAuth::new(cfg.worker_token.as_ref(), "worker"),
            insecure: cfg.insecure,
        },
    );
    let server = tonic::transport::Server::builder()
        .layer(switchyard_otel::grpc::TraceLayer::new(
            tracer,
            "/switchyard.v1.Admin/",
        ))
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin_svc)
        .add_service(worker_svc);
    let c = cancel.clone();
    match tls {
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
            tasks.spawn(async move {
                if let Err(e) = server
                    .serve_with_incoming_shutdown(incoming, c.clone().cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "gRPC server failed");
                }
                c.cancel();
            });
        }
        Some((config, resolver)) => {
            tasks.spawn(tls::run_reloader(resolver, cancel.clone()));
            let incoming = tls::incoming(grpc, config, tasks.clone(), cancel.clone());
            tasks.spawn(async move {
                if let Err(e) = server
                    .serve_with_incoming_shutdown(incoming, c.clone().cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "gRPC server failed");
                }
                c.cancel();
            });
        }
    }
    if let Some(listener) = http {
        let c = cancel.clone();
        let router = http::router(metrics.clone(), console);
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(c.clone().cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
            c.cancel();
        });
    }
    tasks.close();
    tracing::info!(%grpc_addr, ?http_addr, store = store.kind().as_str(), version, transport, "control plane started");
    Ok(Running {
        grpc_addr,
        http_addr,
        cancel,
        tasks,
        store,
    })
}
