//! `switchyard`: parse arguments, run one command, map errors to exit codes
//! (1 = server or validation error, 2 = usage error; clap exits 2 by itself).

use clap::Parser;
use switchyard_ctl::{exit_code, run, Cli, Command};

fn main() {
    let cli = Cli::parse();
    // Admin commands make a few RPCs: one thread is plenty. `up` serves traffic.
    let runtime = if matches!(cli.command, Command::Up(_)) {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let result = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    if let Err(e) = result {
        let code = exit_code(&e);
        if code != switchyard_ctl::EXIT_STDOUT_CLOSED {
            // `{:#}` joins the context chain on one line: `file.toml: providers.x: ...`.
            eprintln!("error: {e:#}");
        }
        std::process::exit(code);
    }
}
