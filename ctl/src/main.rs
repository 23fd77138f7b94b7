//! `switchyard`: parse arguments, run one command, map errors to exit codes
//! (1 = server or validation error, 2 = usage error; clap exits 2 by itself).

use clap::Parser;
use switchyard_ctl::{exit_code, run, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        // `{:#}` joins the context chain on one line: `file.toml: providers.x: ...`.
        eprintln!("error: {e:#}");
        std::process::exit(exit_code(&e));
    }
}
