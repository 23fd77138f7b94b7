//! The Codex CLI (npm `@openai/codex`, installed by scripts/ensure-deps.sh into
//! `.tools/codex`) against a real worker with a custom `model_providers` entry speaking
//! the Responses API: `codex exec` answers, streamed, with no stall, and its tokens are
//! booked.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{bail, Result};
use switchyard_mock::{MockOptions, MockServer};
use switchyard_tests::repo_root;
use switchyard_tests::worker::{backend, key, model, provider, snapshot, start_with_snapshot};

const KEY: &str = "sk-sy-codex-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_exec_answers_through_the_worker() -> Result<()> {
    let codex = repo_root().join(".tools/codex/node_modules/.bin/codex");
    if !codex.exists() {
        bail!(
            "{} is missing: run scripts/ensure-deps.sh (installs @openai/codex)",
            codex.display()
        );
    }
    let m = MockServer::start(MockOptions::default()).await?;
    let snap = snapshot(
        1,
        vec![provider("oa", "openai", &m.openai_base(), &[("k", "sk-up")])],
        vec![model(
            "codex-model",
            "round_robin",
            vec![backend("oa", "oa", "up-model", 1, 0)],
        )],
        vec![key("main", KEY, &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let home = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    std::fs::write(
        home.path().join("config.toml"),
        format!(
            "model = \"codex-model\"\nmodel_provider = \"switchyard\"\n\n\
             [model_providers.switchyard]\nname = \"Switchyard\"\nbase_url = \"{}/v1\"\n\
             env_key = \"SWITCHYARD_KEY\"\nwire_api = \"responses\"\n",
            w.url("http")
        ),
    )?;
    let run = tokio::process::Command::new(&codex)
        .args(["exec", "--skip-git-repo-check", "Say hello"])
        .current_dir(work.path())
        .env("CODEX_HOME", home.path())
        .env("SWITCHYARD_KEY", KEY)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    // No stall: Codex gives up on a stream after minutes; the answer takes well under one.
    let out = tokio::time::timeout(Duration::from_secs(90), run).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("canned reply from switchyard-mock"),
        "codex exec failed ({}):\n{stdout}\n{stderr}\nworker stderr:\n{}",
        out.status,
        w.stderr_text()
    );
    // Streamed, through the Responses API, and booked.
    let seen = m.requests();
    assert!(
        seen.iter()
            .any(|r| r.path == "/v1/responses" && r.stream && r.credential.as_deref() == Some("sk-up")),
        "{:?}",
        seen.iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>()
    );
    let metrics = reqwest::get(format!("{}/metrics", w.url("ops")))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("switchyard_tokens_total{model=\"codex-model\",type=\"completion\"}"),
        "{metrics}"
    );
    Ok(())
}
