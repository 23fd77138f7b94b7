//! The `switchyard` CLI: every Admin RPC, declarative apply/export, workers and status.
//!
//! `main.rs` only parses arguments and maps errors to exit codes; everything else lives
//! here so that it can be unit-tested. Admin commands talk to the control plane only
//! through its gRPC API (see `client`).

pub mod certs;
pub mod cli;
pub mod client;
pub mod commands;
pub mod doc;
pub mod limits;
pub mod price;
pub mod secret;
pub mod table;
pub mod up;
pub mod usage;
pub mod view;

use anyhow::Result;
use clap::CommandFactory;

pub use cli::{Cli, Command, Output};

/// A mistake in how the CLI was called that clap could not catch (exit code 2, like
/// clap's own usage errors).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The reader of stdout went away (`switchyard completions zsh | head -1`). Not a
/// failure to report: `main` exits quietly with 141, the status a shell shows for a
/// process that SIGPIPE ended, as `cat` or `grep` in the same pipe would.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Exit status for [`StdoutClosed`]: 128 + SIGPIPE.
pub const EXIT_STDOUT_CLOSED: i32 = 141;

/// Write `s` to stdout. Every stdout write of the CLI goes through here: Rust ignores
/// SIGPIPE, so `print!` would panic on a closed pipe (and resetting the signal needs
/// `unsafe`, which the workspace forbids); a closed pipe becomes [`StdoutClosed`].
pub fn out(s: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// Exit code for an error returned by [`run`]: 2 for usage errors, 141 for a closed
/// stdout, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<UsageError>().is_some() {
        2
    } else if e.downcast_ref::<StdoutClosed>().is_some() {
        EXIT_STDOUT_CLOSED
    } else {
        1
    }
}

/// Run one parsed command to completion.
pub async fn run(cli: Cli) -> Result<()> {
    // `up` runs a gateway instead of talking to one.
    let cli = match cli.command {
        Command::Up(a) => return up::run(a).await,
        command => Cli { command, ..cli },
    };
    let ctx = commands::Ctx { output: cli.output };
    // Commands that need no control plane.
    let document = match &cli.command {
        Command::Certs(cli::CertsCmd::Init(a)) => {
            let msg = certs::init(a).map_err(|e| UsageError(format!("{e:#}")))?;
            return out(&msg);
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "switchyard", &mut script);
            return out(&String::from_utf8_lossy(&script));
        }
        Command::Prices => return commands::prices(&ctx),
        // Read and check the file (and its secrets) before connecting: a typo in the file
        // should not depend on the control plane being up.
        Command::Apply(a) => {
            let mut doc = commands::load_document(&a.file)?;
            if a.default_prices {
                let (priced, unpriced) = price::fill_defaults(&mut doc.document, &price::default_table()?);
                if !priced.is_empty() {
                    eprintln!("priced from the default table: {}", priced.join(", "));
                }
                if !unpriced.is_empty() {
                    eprintln!(
                        "note: no price in the default table for {} (their requests stay unpriced)",
                        unpriced.join(", ")
                    );
                }
            }
            // An empty file with --prune would silently delete everything: almost always
            // a wrong path or an empty pipe, never what anyone meant.
            let d = &doc.document;
            if a.prune && d.providers.is_empty() && d.models.is_empty() && d.keys.is_empty() {
                return Err(UsageError(format!(
                    "{}: the document is empty; refusing to --prune everything",
                    if a.file == "-" { "<stdin>" } else { &a.file }
                ))
                .into());
            }
            Some(doc)
        }
        Command::Credentials(cli::CredentialsCmd::Add(a)) if !a.secret.is_given() => {
            return Err(UsageError(
                "a secret is required: --secret-env VAR, --secret-file PATH or --secret - (stdin)".into(),
            )
            .into())
        }
        _ => None,
    };
    let token = cli.admin_token().map_err(|e| UsageError(e.to_string()))?;
    let mut admin = client::Admin::connect(&cli.control_url(), token.as_deref(), &cli.control_tls()).await?;
    let admin = &mut admin;
    match cli.command {
        Command::Providers(c) => commands::providers(&ctx, admin, c).await,
        Command::Credentials(c) => commands::credentials(&ctx, admin, c).await,
        Command::Models(c) => commands::models(&ctx, admin, c).await,
        Command::Backends(c) => commands::backends(&ctx, admin, c).await,
        Command::Keys(c) => commands::keys(&ctx, admin, c).await,
        Command::Limits(a) => limits::limits(&ctx, admin, a).await,
        Command::Apply(a) => commands::apply(&ctx, admin, a, document.unwrap_or_default()).await,
        Command::Export(a) => commands::export(&ctx, admin, a).await,
        Command::Workers(c) => commands::workers(&ctx, admin, c).await,
        Command::Status => commands::status(&ctx, admin).await,
        Command::Usage(a) => usage::usage(&ctx, admin, a).await,
        Command::Spend(a) => usage::spend(&ctx, admin, a).await,
        Command::Health(a) => usage::health(&ctx, admin, a).await,
        Command::Completions { .. } | Command::Up(_) | Command::Prices | Command::Certs(_) => Ok(()),
    }
}
