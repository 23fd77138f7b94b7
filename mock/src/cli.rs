//! Command-line interface of the `switchyard-mock` binary.

use std::net::SocketAddr;

use clap::Parser;

use crate::{Behavior, MockOptions, MockServer};

/// Scriptable mock LLM upstream (OpenAI and Anthropic wire formats).
#[derive(Debug, Parser)]
#[command(name = "switchyard-mock", version)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Name echoed in the `x-mock-name` response header.
    #[arg(long, default_value = "mock")]
    pub name: String,
    /// Default behaviour as JSON (see `Behavior`), e.g. '{"latency_ms":5}'.
    #[arg(long)]
    pub default: Option<String>,
    /// Shortcut: content chunks per streamed response.
    #[arg(long)]
    pub stream_chunks: Option<usize>,
    /// Shortcut: delay before each streamed content chunk, in milliseconds.
    #[arg(long)]
    pub chunk_delay_ms: Option<u64>,
    /// Extra header to read the credential from (besides authorization and x-api-key).
    #[arg(long)]
    pub credential_header: Option<String>,
    /// Model ids for GET /v1/models (repeatable).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Do not keep the in-memory request log (for benchmarks).
    #[arg(long)]
    pub no_request_log: bool,
    /// Runtime worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Args {
    /// The server options these arguments describe.
    pub fn options(&self) -> Result<MockOptions, String> {
        let mut default = match &self.default {
            Some(j) => serde_json::from_str::<Behavior>(j).map_err(|e| format!("--default: {e}"))?,
            None => Behavior::default(),
        };
        if let Some(n) = self.stream_chunks {
            default.stream_chunks = n;
        }
        if let Some(d) = self.chunk_delay_ms {
            default.chunk_delay_ms = d;
        }
        Ok(MockOptions {
            listen: Some(self.listen),
            name: self.name.clone(),
            default: Some(default),
            credential_header: self.credential_header.clone(),
            models: self.models.clone(),
            no_request_log: self.no_request_log,
        })
    }
}

/// Start the server, print the `listening http=ADDR` line, serve until SIGINT/SIGTERM.
pub async fn run(opts: MockOptions) -> std::io::Result<()> {
    let server = MockServer::start(opts).await?;
    println!("listening http={}", server.addr());
    shutdown_signal().await?;
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
