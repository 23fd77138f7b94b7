//! The Claude Code CLI (npm `@anthropic-ai/claude-code`, its native binary comes in a
//! platform package; installed by scripts/ensure-deps.sh into `.tools/claude`) against a
//! real worker, in print mode: once on an Anthropic-kind backend (passthrough) and once on
//! an OpenAI-kind backend (translated both ways), streamed, with its tokens booked.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{bail, Result};
use switchyard_mock::{MockOptions, MockServer};
use switchyard_tests::repo_root;
use switchyard_tests::worker::{backend, key, model, provider, snapshot, start_with_snapshot};

const KEY: &str = "sk-sy-claude-code-key-0123456789";

/// Claude Code asks for its own model names (a main one and a small one for titles and
/// such); the model answers them all through a `*` alias.
async fn run_claude(kind: &str) -> Result<()> {
    let claude = repo_root().join(".tools/claude/node_modules/.bin/claude");
    if !claude.exists() {
        bail!(
            "{} is missing: run scripts/ensure-deps.sh (installs @anthropic-ai/claude-code)",
            claude.display()
        );
    }
    let m = MockServer::start(MockOptions::default()).await?;
    let base = if kind == "anthropic" {
        m.url()
    } else {
        m.openai_base()
    };
    let mut model = model(
        "claude",
        "round_robin",
        vec![backend("up", "up", "up-model", 1, 0)],
    );
    model.aliases = vec!["*".into()];
    let snap = snapshot(
        1,
        vec![provider("up", kind, &base, &[("k", "sk-up")])],
        vec![model],
        vec![key("main", KEY, &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let home = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let run = tokio::process::Command::new(&claude)
        .args(["--bare", "-p", "Say hello", "--model", "claude-sonnet-4-5"])
        .current_dir(work.path())
        .env("HOME", home.path())
        .env("CLAUDE_CONFIG_DIR", home.path().join(".claude"))
        .env("ANTHROPIC_BASE_URL", w.url("http"))
        .env("ANTHROPIC_API_KEY", KEY)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("canned reply from switchyard-mock"),
        "claude -p failed on a {kind} backend ({}):\n{stdout}\n{stderr}\nworker stderr:\n{}",
        out.status,
        w.stderr_text()
    );
    // It reached the backend in the backend's own dialect, streamed, with the operator's
    // credential, and the tokens were counted.
    let path = if kind == "anthropic" {
        "/v1/messages"
    } else {
        "/v1/chat/completions"
    };
    let seen = m.requests();
    assert!(
        seen.iter()
            .any(|r| r.path.ends_with(path) && r.stream && r.credential.as_deref() == Some("sk-up")),
        "{:?}",
        seen.iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>()
    );
    let metrics = reqwest::get(format!("{}/metrics", w.url("ops")))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("switchyard_tokens_total{model=\"claude\",type=\"completion\"}"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_on_an_anthropic_backend() -> Result<()> {
    run_claude("anthropic").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_on_an_openai_backend_translated() -> Result<()> {
    run_claude("openai").await
}
