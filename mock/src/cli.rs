//! Command-line interface of the `switchyard-mock` binary.

use std::net::SocketAddr;

use clap::Parser;

use crate::{Behavior, MockOptions, MockServer};

/// What `--help` says about the control endpoints (served on the same address).
pub const CONTROL_HELP: &str = "\
Fault injection and inspection, over HTTP on the same address. A Behavior is JSON with every
field optional: latency_ms, status, retry_after_s, fault (\"drop\", \"hang\" or
{\"cut_stream\":{\"after_chunks\":N}}), stream_chunks, chunk_delay_ms, reply, usage, json_style,
reject_credentials, reject_header.
  POST /_mock/default    the behaviour of every request (e.g. -d '{\"status\":500}')
  POST /_mock/push       a one-shot behaviour for the next request (a FIFO queue)
  POST /_mock/reset      back to the defaults: empties the queue, counters and request log
  GET  /_mock/stats      request counters
  GET  /_mock/requests   the requests seen (method, path, headers, body, credential)

API: POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages,
/v1/messages/count_tokens, other POST /v1/* (echoed); GET /v1/models. A chat or messages
request with `tools` gets a call of its first tool with {\"location\":\"Paris\"} (streamed
too), unless its last message carries a tool result.";

/// Scriptable mock LLM upstream (OpenAI and Anthropic wire formats) with fault injection.
#[derive(Debug, Parser)]
#[command(name = "switchyard-mock", version, after_help = CONTROL_HELP)]
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
    /// Serve HTTPS with this PEM certificate (with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require client certificates signed by this PEM CA (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
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
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::MockTls {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                }),
                _ => None,
            },
        })
    }
}

/// Start the server, print the `listening http=ADDR` line, serve until SIGINT/SIGTERM.
pub async fn run(opts: MockOptions) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // The handlers exist before the line is printed: a SIGTERM sent as soon as the line
    // is read must reach them, not the default action (which would kill the process).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = MockServer::start(opts).await?;
    println!("listening http={}", server.addr());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
