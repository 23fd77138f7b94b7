//! `switchyard-control`: parse flags and env, set up logging, run the control plane
//! until SIGTERM/SIGINT.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use switchyard_control::{Config, MasterKey, Secret};

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
    #[arg(long, env = "SWITCHYARD_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
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
    /// Allow a non-loopback listen address without tokens.
    #[arg(long)]
    insecure: bool,
}

fn config(a: Args) -> Result<Config, switchyard_control::Error> {
    Ok(Config {
        database_url: a.database_url.filter(|s| !s.is_empty()),
        data_dir: a.data_dir,
        grpc_listen: a.grpc_listen,
        http_listen: Some(a.http_listen),
        admin_token: a.admin_token.filter(|s| !s.is_empty()).map(Secret::new),
        worker_token: a.worker_token.filter(|s| !s.is_empty()).map(Secret::new),
        insecure: a.insecure,
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
