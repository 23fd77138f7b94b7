//! The official `openai` and `anthropic` Python SDKs against a real worker: plain and
//! streaming calls, and typed errors; and across dialects (translated): plain, streaming,
//! tool-call and streaming tool-call round trips. Needs the repo's `.venv`
//! (scripts/ensure-deps.sh).
#![allow(clippy::unwrap_used)]

use anyhow::{bail, Result};
use switchyard_mock::{MockOptions, MockServer};
use switchyard_tests::repo_root;
use switchyard_tests::worker::{backend, key, model, provider, snapshot, start_with_snapshot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdks_work_against_the_worker() -> Result<()> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/ensure-deps.sh (creates .venv with the openai and anthropic SDKs)",
            python.display()
        );
    }
    let m = MockServer::start(MockOptions::default()).await?;
    let snap = snapshot(
        1,
        vec![
            provider("oa", "openai", &m.openai_base(), &[("k", "sk-up")]),
            provider("an", "anthropic", &m.url(), &[("k", "sk-ant-up")]),
        ],
        vec![
            model("gpt-sdk", "round_robin", vec![backend("oa", "oa", "", 1, 0)]),
            model("claude-sdk", "round_robin", vec![backend("an", "an", "", 1, 0)]),
        ],
        vec![
            key("main", "sk-sy-sdk-key-0123456789", &[]),
            key("lim", "sk-sy-sdk-limited-0123456789", &["other"]),
        ],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let out = tokio::process::Command::new(&python)
        .arg(root.join("tests/python/sdk_check.py"))
        .env("SY_BASE", w.url("http"))
        .env("SY_KEY", "sk-sy-sdk-key-0123456789")
        .env("SY_LIMITED", "sk-sy-sdk-limited-0123456789")
        .env("SY_OA_MODEL", "gpt-sdk")
        .env("SY_AN_MODEL", "claude-sdk")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "sdk_check.py failed ({}):\n{stdout}\n{stderr}\nworker stderr:\n{}",
        out.status,
        w.stderr_text()
    );
    Ok(())
}

/// The `openai` SDK on a model served by an `anthropic`-kind backend, and the `anthropic`
/// SDK on one served by an `openai`-kind backend (`tests/python/sdk_translate.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdks_work_across_dialects() -> Result<()> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/ensure-deps.sh (creates .venv with the openai and anthropic SDKs)",
            python.display()
        );
    }
    let m = MockServer::start(MockOptions::default()).await?;
    let snap = snapshot(
        1,
        vec![
            provider("oa", "openai", &m.openai_base(), &[("k", "sk-up")]),
            provider("an", "anthropic", &m.url(), &[("k", "sk-ant-up")]),
        ],
        vec![
            model(
                "gpt-on-claude",
                "round_robin",
                vec![backend("an", "an", "claude-up", 1, 0)],
            ),
            model(
                "claude-on-gpt",
                "round_robin",
                vec![backend("oa", "oa", "gpt-up", 1, 0)],
            ),
        ],
        vec![key("main", "sk-sy-sdk-key-0123456789", &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let out = tokio::process::Command::new(&python)
        .arg(root.join("tests/python/sdk_translate.py"))
        .env("SY_BASE", w.url("http"))
        .env("SY_KEY", "sk-sy-sdk-key-0123456789")
        .env("SY_OA_ON_AN", "gpt-on-claude")
        .env("SY_AN_ON_OA", "claude-on-gpt")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "sdk_translate.py failed ({}):\n{stdout}\n{stderr}\nworker stderr:\n{}",
        out.status,
        w.stderr_text()
    );
    Ok(())
}
