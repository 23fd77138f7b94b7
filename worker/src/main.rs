//! `switchyard-worker`: parse flags and env, set up logging, run until SIGTERM/SIGINT.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "switchyard-worker", version, about = "Switchyard data plane")]
struct Args {
    /// Address to serve client traffic on.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address of the ops listener: the detailed `/health` (names, states, last errors)
    /// and `/metrics`. Keep it off the client network; the client port's `/health`
    /// shows counts only.
    #[arg(long, env = "SWITCHYARD_OPS_LISTEN", default_value = "127.0.0.1:9091")]
    ops_listen: SocketAddr,
    /// Control plane gRPC URL.
    #[arg(
        long,
        env = "SWITCHYARD_CONTROL_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    control: String,
    /// Bearer token for the control plane's worker API.
    #[arg(long, env = "SWITCHYARD_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// Read the worker token from this file (it then does not show in `ps`).
    #[arg(long, env = "SWITCHYARD_WORKER_TOKEN_FILE", conflicts_with = "worker_token")]
    worker_token_file: Option<PathBuf>,
    /// PEM CA that signs control's certificate, for an `https://` control URL
    /// (default: the public web roots).
    #[arg(long, env = "SWITCHYARD_CONTROL_CA")]
    control_ca: Option<PathBuf>,
    /// PEM client certificate presented to control (mTLS); its CN names this worker.
    #[arg(long, env = "SWITCHYARD_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, env = "SWITCHYARD_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Worker id reported to control (default: hostname-pid).
    #[arg(long, env = "SWITCHYARD_WORKER_ID")]
    worker_id: Option<String>,
    /// Directory for the last-known-good snapshot.
    #[arg(
        long,
        env = "SWITCHYARD_STATE_DIR",
        default_value = "./switchyard-worker-state"
    )]
    state_dir: PathBuf,
    /// File holding a 32-byte key (base64 or hex) that encrypts the last-known-good
    /// snapshot (AES-256-GCM). Without it the file is written in the clear, mode 0600.
    #[arg(long, env = "SWITCHYARD_STATE_KEY_FILE")]
    state_key_file: Option<PathBuf>,
    /// How long to wait for in-flight requests on shutdown.
    #[arg(long, env = "SWITCHYARD_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// How long a client connection may take to send a request head, or stay idle between
    /// requests, before it is closed (slow-loris and idle keep-alive limit).
    #[arg(long, env = "SWITCHYARD_HEADER_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    header_timeout: Duration,
    /// Largest accepted request body.
    #[arg(long, env = "SWITCHYARD_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,
    /// How long a request body may take to arrive whole (counted from the first wait for
    /// it); later: 408 and the connection is closed.
    #[arg(long, env = "SWITCHYARD_BODY_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    body_timeout: Duration,
    /// Slowest accepted request body, in bytes per second averaged since the first wait,
    /// enforced once `--body-rate-grace` has passed (0: no minimum).
    #[arg(long, env = "SWITCHYARD_BODY_MIN_RATE", default_value_t = 1024)]
    body_min_rate: u64,
    /// How long a request body may arrive slower than `--body-min-rate`.
    #[arg(long, env = "SWITCHYARD_BODY_RATE_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    body_rate_grace: Duration,
    /// How long a client may leave a response unread (its writes pending) before its
    /// connection is closed and the request booked as client_aborted.
    #[arg(long, env = "SWITCHYARD_SEND_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    send_timeout: Duration,
    /// How long a request refused only because this worker's slice of a limit is spent
    /// waits for the new slice it asked control for (0: refuse at once).
    #[arg(long, env = "SWITCHYARD_LIMIT_WAIT", default_value = "250ms", value_parser = humantime::parse_duration)]
    limit_wait: Duration,
    /// Longest cool-down an upstream's `Retry-After` may put on a credential.
    #[arg(long, env = "SWITCHYARD_RETRY_AFTER_CAP", default_value = "10m", value_parser = humantime::parse_duration)]
    retry_after_cap: Duration,
    /// How long the worker keeps reading an upstream answer, for its usage, after the
    /// client went away mid-answer (0: not at all; what was seen is booked).
    #[arg(long, env = "SWITCHYARD_ABORT_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    abort_drain: Duration,
    /// How many bytes of such an answer it reads at most (0: not at all).
    #[arg(long, env = "SWITCHYARD_ABORT_DRAIN_BYTES", default_value_t = 1024 * 1024)]
    abort_drain_bytes: usize,
    /// Threads serving traffic (default: the CPUs this process may run on). With one, the
    /// worker runs on a single-threaded runtime: no work-stealing machinery to pay for.
    #[arg(long, env = "SWITCHYARD_WORKER_THREADS")]
    threads: Option<std::num::NonZeroUsize>,
    /// Consecutive failures that eject a backend or credential.
    #[arg(long, env = "SWITCHYARD_EJECT_AFTER", default_value_t = 3)]
    eject_after: u32,
    /// Base ejection time (grows on repeated ejections).
    #[arg(long, env = "SWITCHYARD_EJECTION_TIME", default_value = "30s", value_parser = humantime::parse_duration)]
    ejection_time: Duration,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

// jemalloc: ~10% less CPU per request than glibc's malloc and less memory per open
// stream (27 vs 30 KB). mimalloc was as fast but doubled idle RSS and per-stream memory.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .map(std::num::NonZeroUsize::get)
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(std::num::NonZeroUsize::get)
        })
        .unwrap_or(1);
    let mut rt = if threads == 1 {
        // Pinned to one CPU (or asked for one thread), a work-stealing scheduler only
        // costs: every wake-up goes through its queues and atomics for nobody to steal.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    rt.enable_all()
        .build()
        .context("start the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // No colour codes when stderr is a file or a pipe: they cost CPU on the one
        // per-request log line and are noise in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // The per-request access lines are batched by their own writer thread (see
    // `accesslog`); the other log lines are rare and written as they come.
    let (access_log, _access_guard) =
        switchyard_worker::accesslog::spawn(std::io::stderr()).context("start the access log")?;
    let mut cfg = switchyard_worker::Config::new(args.listen);
    cfg.ops_listen = Some(args.ops_listen);
    cfg.control_url = Some(args.control.clone());
    let token = match (args.worker_token, &args.worker_token_file) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => {
            let t =
                std::fs::read_to_string(f).with_context(|| format!("--worker-token-file {}", f.display()))?;
            let t = t.trim_end().to_string();
            anyhow::ensure!(!t.is_empty(), "--worker-token-file {} is empty", f.display());
            Some(t)
        }
        (None, None) => None,
    };
    cfg.worker_token = token
        .filter(|t| !t.is_empty())
        .map(switchyard_worker::Secret::new);
    cfg.control_tls = switchyard_proto::channel::ClientTls {
        ca: args.control_ca,
        cert: args.client_cert,
        key: args.client_key,
    };
    // Bad TLS settings (a missing file, a CA with an http:// URL) fail here, not as a
    // reconnect loop.
    switchyard_proto::channel::endpoint(&args.control, &cfg.control_tls).context("--control")?;
    cfg.worker_id = args.worker_id.unwrap_or_else(default_worker_id);
    cfg.state_dir = Some(args.state_dir);
    if let Some(f) = &args.state_key_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("--state-key-file {}", f.display()))?;
        cfg.state_key = Some(
            switchyard_worker::watch::StateKey::parse(&text)
                .map_err(|e| anyhow::anyhow!("--state-key-file {}: {e}", f.display()))?,
        );
    }
    cfg.drain_timeout = args.drain_timeout;
    cfg.header_timeout = args.header_timeout;
    cfg.max_body_bytes = args.max_body_bytes;
    cfg.body_limits = switchyard_worker::body::BodyLimits {
        timeout: args.body_timeout,
        min_rate: args.body_min_rate,
        grace: args.body_rate_grace,
    };
    cfg.send_timeout = args.send_timeout;
    cfg.retry_after_cap = args.retry_after_cap;
    cfg.limit_wait = args.limit_wait;
    cfg.abort_drain = switchyard_worker::relay::AbortDrain {
        time: args.abort_drain,
        bytes: args.abort_drain_bytes,
    };
    cfg.access_log = Some(access_log);
    // Traces: off unless an OTLP endpoint is set (README "Observability").
    cfg.traces = switchyard_otel::Settings::from_env().context("traces (OTEL_* environment)")?;
    if let Some(t) = &cfg.traces {
        tracing::info!(protocol = ?t.protocol, sampler = ?t.sampler, "exporting traces over OTLP");
    }
    cfg.breaker.failure_threshold = args.eject_after.max(1);
    cfg.breaker.base_ejection_ms = args.ejection_time.as_millis() as u64;
    cfg.breaker.max_ejection_ms = cfg.breaker.max_ejection_ms.max(cfg.breaker.base_ejection_ms);
    let running = switchyard_worker::start(cfg).await.context("start worker")?;
    match running.ops_addr() {
        Some(ops) => println!("listening http={} ops={ops}", running.http_addr()),
        None => println!("listening http={}", running.http_addr()),
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
