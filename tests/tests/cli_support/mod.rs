//! Shared helpers for the CLI tests: a real `switchyard-control` on SQLite and a runner
//! for the real `switchyard` binary that checks no registered secret ever appears in
//! its output.
#![allow(dead_code, clippy::unwrap_used)]

use std::{process::Stdio, sync::Mutex};

use anyhow::Result;
use switchyard_tests::{bin_path, DbKind, Proc, TestDb};
use tokio::{io::AsyncWriteExt, process::Command};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const WORKER_TOKEN: &str = "test-worker-token-0123456789";

/// What one `switchyard` invocation produced.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Assert success and return stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "expected success; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Assert exit code `code` and return stderr.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(
            self.code, code,
            "expected exit {code}; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stderr
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", self.stdout))
    }
}

/// A running control plane plus the CLI pointed at it.
pub struct Env {
    pub control: Proc,
    pub url: String,
    pub db: TestDb,
    /// Secret values that must never show up in any output.
    secrets: Mutex<Vec<String>>,
}

impl Env {
    pub async fn start() -> Result<Env> {
        let db = TestDb::new(DbKind::Sqlite).await?.expect("sqlite always runs");
        let mut cmd = Command::new(bin_path("switchyard-control"));
        cmd.args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(db.dir.path().join("data"))
            .args(["--database-url", &db.url])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--worker-token", WORKER_TOKEN])
            .env_remove("SWITCHYARD_MASTER_KEY");
        let control = Proc::spawn("control", cmd).await?;
        let url = control.url("grpc");
        Ok(Env {
            control,
            url,
            db,
            secrets: Mutex::new(Vec::new()),
        })
    }

    /// Register a secret: every later run asserts it is absent from stdout and stderr.
    pub fn secret(&self, s: &str) -> String {
        self.secrets.lock().unwrap().push(s.to_string());
        s.to_string()
    }

    pub async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, &[], None).await
    }

    pub async fn run_with(&self, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Out {
        let out = self.run_unchecked(args, envs, stdin).await;
        for s in self.secrets.lock().unwrap().iter() {
            assert!(
                !out.stdout.contains(s.as_str()) && !out.stderr.contains(s.as_str()),
                "a secret leaked in the output of {args:?}:\nstdout:\n{}\nstderr:\n{}",
                out.stdout,
                out.stderr
            );
        }
        out
    }

    /// Run without the secret check (for `export --include-secrets`).
    pub async fn run_unchecked(&self, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Out {
        let mut cmd = cli();
        cmd.env("SWITCHYARD_CONTROL_URL", &self.url)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        run_cmd(cmd, stdin).await
    }
}

/// The `switchyard` binary with a clean environment of `SWITCHYARD_*` variables.
pub fn cli() -> Command {
    let mut cmd = Command::new(bin_path("switchyard"));
    cmd.env_remove("SWITCHYARD_CONTROL_URL")
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .current_dir(std::env::temp_dir());
    cmd
}

pub async fn run_cmd(mut cmd: Command, stdin: Option<&str>) -> Out {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn switchyard");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("switchyard did not finish within 60 s")
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The env vars `examples/switchyard.toml` reads, with distinctive secret values.
pub fn example_env() -> Vec<(String, String)> {
    [
        "JB_JWT_1",
        "JB_JWT_2",
        "JB_JWT_3",
        "ANTHROPIC_KEY_1",
        "ANTHROPIC_KEY_2",
        "CLAUDE_RELAY_KEY",
        "OPENAI_API_KEY",
        "DEEPSEEK_API_KEY",
        "OPENROUTER_API_KEY",
        "INFERENCE_A_KEY",
        "INFERENCE_B_KEY",
    ]
    .iter()
    .map(|v| {
        (
            v.to_string(),
            format!("secret-{v}-{}", uuid::Uuid::new_v4().simple()),
        )
    })
    .collect()
}

pub fn example_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("switchyard.toml")
}
