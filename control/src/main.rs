//! `switchyard-control`: parse flags and env, set up logging, run the control plane
//! until SIGTERM/SIGINT.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use switchyard_control::{tls::TlsFiles, Config, MasterKey, Secret};

#[derive(Parser, Debug)]
#[command(name = "switchyard-control", version, about = "Switchyard control plane")]
struct Args {
    /// `postgres://...` or `sqlite:...`; default: SQLite file `<data-dir>/switchyard.db`.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, env = "SWITCHYARD_DATA_DIR", default_value = "./switchyard-data")]
    data_dir: PathBuf,
    #[arg(long, env = "SWITCHYARD_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    grpc_listen: SocketAddr,
    /// `/healthz` and `/metrics` (port 0 picks a free port).
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN", default_value = "127.0.0.1:9090")]
    http_listen: SocketAddr,
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Read the admin token from this file (it then does not show in `ps`).
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,
    #[arg(long, env = "SWITCHYARD_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// Read the worker token from this file.
    #[arg(long, env = "SWITCHYARD_WORKER_TOKEN_FILE", conflicts_with = "worker_token")]
    worker_token_file: Option<PathBuf>,
    /// PEM certificate (chain) for the gRPC listener: serve TLS. Re-read when it changes.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): require client certificates signed by it (mTLS). A
    /// worker's certificate then names it (CN, else first DNS SAN) and replaces the token.
    #[arg(long, env = "SWITCHYARD_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// 32 bytes, base64 or hex: encrypts credential secrets at rest.
    #[arg(long, env = "SWITCHYARD_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    #[arg(long, env = "SWITCHYARD_MASTER_KEY_VERSION", default_value_t = 1)]
    master_key_version: u32,
    /// Previous keys for rotation: `1:<key>,2:<key>`.
    #[arg(long, env = "SWITCHYARD_OLD_MASTER_KEYS", hide_env_values = true)]
    old_master_keys: Option<String>,
    /// Keep raw usage records this long (e.g. `30d`), then roll them up into hourly
    /// aggregates; `0` keeps them forever.
    #[arg(long, env = "SWITCHYARD_USAGE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    usage_retention: std::time::Duration,
    /// Allow a non-loopback listen address without tokens, and snapshots (with their
    /// secrets) over plaintext to non-loopback workers. Logged as a warning at start.
    #[arg(long)]
    insecure: bool,
}

/// A token from its flag, else from its file (trailing newline removed).
fn token(
    value: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<Secret>, switchyard_control::Error> {
    let v = match (value, file) {
        (Some(v), _) => v,
        (None, Some(f)) => {
            let cfg = |m: String| switchyard_control::Error::Config(format!("{}: {m}", f.display()));
            let v = std::fs::read_to_string(f).map_err(|e| cfg(e.to_string()))?;
            let v = v.trim_end().to_string();
            if v.is_empty() {
                return Err(cfg("the token file is empty".into()));
            }
            v
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(v).filter(|s| !s.is_empty()).map(Secret::new))
}

fn config(a: Args) -> Result<Config, switchyard_control::Error> {
    Ok(Config {
        database_url: a.database_url.filter(|s| !s.is_empty()),
        data_dir: a.data_dir,
        grpc_listen: a.grpc_listen,
        http_listen: Some(a.http_listen),
        admin_token: token(a.admin_token, a.admin_token_file.as_deref())?,
        worker_token: token(a.worker_token, a.worker_token_file.as_deref())?,
        insecure: a.insecure,
        tls: match (a.tls_cert, a.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: a.tls_client_ca,
            }),
            _ => None,
        },
        usage_retention: Some(a.usage_retention).filter(|d| !d.is_zero()),
        master_key: a
            .master_key
            .filter(|s| !s.is_empty())
            .map(|k| MasterKey::parse(a.master_key_version, &k))
            .transpose()?,
        old_master_keys: a
            .old_master_keys
            .map(|s| MasterKey::parse_list(&s))
            .transpose()?
            .unwrap_or_default(),
        // Off unless an OTLP endpoint is set (README "Observability").
        traces: switchyard_otel::Settings::from_env()
            .map_err(|e| switchyard_control::Error::Config(format!("traces: {e}")))?,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let cfg = match config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match switchyard_control::start(cfg).await {
        Ok(r) => r,
        Err(e @ switchyard_control::Error::Config(_)) => {
            eprintln!("Invalid configuration: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("switchyard-control failed to start: {e}");
            return ExitCode::from(1);
        }
    };
    let http = running.http_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("listening grpc={} http={http}", running.grpc_addr());

    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install SIGTERM handler: {e}");
            return ExitCode::from(1);
        }
    };
    let failed = tokio::select! {
        _ = term.recv() => false,
        _ = tokio::signal::ctrl_c() => false,
        _ = running.wait() => true,
    };
    tracing::info!("shutting down");
    running.shutdown().await;
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
