//! `switchyard up`: the one-command start. Runs the real binary, takes the curl line it
//! prints and runs it with `sh`, restarts on the same data dir (same key), and applies a
//! `--config` file at start.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{bail, Context, Result};
use switchyard_tests::{bin_path, wait_for, Proc};
use tokio::process::Command;

async fn start_up(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
    let mut cmd = Command::new(bin_path("switchyard"));
    cmd.arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
        .args(extra)
        // The test environment must not leak into `up` (it has its own flags).
        .env_remove("SWITCHYARD_DATA_DIR")
        .env_remove("SWITCHYARD_DATABASE_URL")
        .env_remove("SWITCHYARD_MASTER_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn("up", cmd).await
}

/// The `curl ...` line of the banner (the harness keeps later stdout lines in its log).
async fn printed_curl(p: &Proc) -> Result<String> {
    wait_for("the curl line", Duration::from_secs(10), || async {
        Ok(p.stderr_log.lines().into_iter().find_map(|l| {
            l.strip_prefix("[stdout]")
                .map(str::trim)
                .filter(|l| l.starts_with("curl "))
                .map(str::to_string)
        }))
    })
    .await
}

fn printed_value(p: &Proc, label: &str) -> Option<String> {
    p.stderr_log.lines().into_iter().find_map(|l| {
        let rest = l.strip_prefix("[stdout]")?.trim().strip_prefix(label)?;
        Some(rest.trim().to_string())
    })
}

/// Run the line exactly as a user would paste it; return the parsed JSON answer.
async fn run_curl(line: &str) -> Result<serde_json::Value> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(line)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run sh")?;
    if !out.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("curl printed no JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

fn completion_text(v: &serde_json::Value) -> Option<&str> {
    v["choices"][0]["message"]["content"]
        .as_str()
        .filter(|s| !s.is_empty())
}

/// `switchyard keys get up -o json` against a running `up` (admin token from `up.json`).
async fn up_key(p: &Proc, data: &Path) -> Result<serde_json::Value> {
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("up.json"))?)?;
    let out = Command::new(bin_path("switchyard"))
        .args(["keys", "get", "up", "-o", "json"])
        .env("SWITCHYARD_CONTROL_URL", p.url("grpc"))
        .env(
            "SWITCHYARD_ADMIN_TOKEN",
            state["admin_token"].as_str().unwrap_or_default(),
        )
        .output()
        .await?;
    if !out.status.success() {
        bail!("keys get up: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `switchyard export` against a running `up`.
async fn cli_export(p: &Proc, admin: &str) -> Result<String> {
    let out = Command::new(bin_path("switchyard"))
        .arg("export")
        .env("SWITCHYARD_CONTROL_URL", p.url("grpc"))
        .env("SWITCHYARD_ADMIN_TOKEN", admin)
        .output()
        .await?;
    if !out.status.success() {
        bail!("export: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

async fn stop(mut p: Proc) -> Result<()> {
    let status = p.terminate(Duration::from_secs(20)).await?;
    assert!(status.success(), "up exited with {status}: {}", p.stderr_text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_demo_curl_works_and_survives_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");

    let p = start_up(&data, &["--demo"], &[]).await?;
    let http = p.addr("http");
    let line = printed_curl(&p).await?;
    assert!(
        line.contains(&format!("http://{http}/")),
        "curl line targets the worker: {line}"
    );
    let answer = run_curl(&line).await?;
    assert!(completion_text(&answer).is_some(), "no completion in {answer}");
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    // The demo answers with the model asked for, not the mock's own name.
    assert_eq!(answer["model"], "demo", "{answer}");

    // The tokens are in up.json, private, and the printed key is that one.
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("up.json"))?)?;
    let key = state["client_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-sy-"));
    assert!(line.contains(&key));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("up.json"))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(printed_value(&p, "Client API key").as_deref(), Some(key.as_str()));
    let admin = state["admin_token"].as_str().unwrap().to_string();
    assert_eq!(printed_value(&p, "Admin token").as_deref(), Some(admin.as_str()));

    // The CLI works against it with the printed settings.
    let out = Command::new(bin_path("switchyard"))
        .args(["models", "list", "-o", "json"])
        .env("SWITCHYARD_CONTROL_URL", p.url("grpc"))
        .env("SWITCHYARD_ADMIN_TOKEN", &admin)
        .output()
        .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let models: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(models[0]["name"], "demo", "{models}");
    // The demo key may pin a backend (`x-switchyard-backend`).
    assert_eq!(up_key(&p, &data).await?["allow_pin"], true);
    // ... and refuses without the token.
    let out = Command::new(bin_path("switchyard"))
        .args(["models", "list"])
        .env("SWITCHYARD_CONTROL_URL", p.url("grpc"))
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .await?;
    assert!(!out.status.success());

    // A wrong key is refused by the worker.
    let forged = line.replace(&key, "sk-sy-not-the-right-key-000000000000000000");
    let refused = run_curl(&forged).await?;
    assert!(
        completion_text(&refused).is_none(),
        "forged key answered: {refused}"
    );

    let export_before = cli_export(&p, &admin).await?;
    assert!(
        export_before.contains("[[providers]]\nname = \"demo\""),
        "{export_before}"
    );
    stop(p).await?;

    // Restart on the same data dir: same key, new ports, the demo still answers.
    let p = start_up(&data, &["--demo"], &[]).await?;
    // ... and the demo upstream is back on its port: an export saved before is still
    // valid, and applying the demo document again changed nothing.
    let export_after = cli_export(&p, &admin).await?;
    let base_url = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("base_url = "))
            .map(str::to_string)
    };
    assert_eq!(base_url(&export_before), base_url(&export_after));
    assert_eq!(
        export_before.lines().skip(1).collect::<Vec<_>>(),
        export_after.lines().skip(1).collect::<Vec<_>>(),
        "the demo provider changed across a restart"
    );
    let line2 = printed_curl(&p).await?;
    assert!(line2.contains(&key), "the key changed across restarts: {line2}");
    assert!(line2.contains(&format!("http://{}/", p.addr("http"))));
    let answer = run_curl(&line2).await?;
    assert!(
        completion_text(&answer).is_some(),
        "no completion after restart: {answer}"
    );
    let state2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data.join("up.json"))?)?;
    assert_eq!(state, state2, "up.json was rewritten");
    stop(p).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_applies_a_config_file_at_start() -> Result<()> {
    let mock = switchyard_mock::MockServer::start(switchyard_mock::MockOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("switchyard.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[providers]]
name = "team-upstream"
kind = "openai"
base_url = "{}"

[[providers.credentials]]
name = "jwt-1"
secret_env = "UP_TEST_UPSTREAM_SECRET"

[[models]]
name = "team-model"
[[models.backends]]
provider = "team-upstream"
upstream_model = "upstream-x"
"#,
            mock.openai_base()
        ),
    )?;
    let file_arg = file.display().to_string();
    let p = start_up(
        &dir.path().join("data"),
        &["--config", &file_arg],
        &[("UP_TEST_UPSTREAM_SECRET", "sk-upstream-from-env-1")],
    )
    .await?;
    // The banner's curl uses the configured model.
    let line = printed_curl(&p).await?;
    assert!(line.contains(r#""model":"team-model""#), "{line}");
    let answer = run_curl(&line).await?;
    assert!(completion_text(&answer).is_some(), "no completion in {answer}");
    // The upstream saw the credential from the file's secret_env, and the upstream model.
    let seen = mock.requests();
    let last = seen.last().context("the mock saw no request")?;
    assert_eq!(
        last.header("authorization"),
        Some("Bearer sk-upstream-from-env-1")
    );
    assert_eq!(last.json().unwrap()["model"], "upstream-x");
    // Without --demo the key gets no pin permission; a later --demo start grants it.
    let data = dir.path().join("data");
    assert_eq!(up_key(&p, &data).await?["allow_pin"], false);
    stop(p).await?;
    let p = start_up(&data, &["--demo"], &[]).await?;
    printed_curl(&p).await?;
    assert_eq!(up_key(&p, &data).await?["allow_pin"], true);
    stop(p).await?;

    // A file that does not apply stops `up` with the file's error, before serving.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[models]]\nname = \"m\"\nstrategy = \"nope\"\n")?;
    let out = Command::new(bin_path("switchyard"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("strategy"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening "));
    Ok(())
}

/// An Anthropic-only config: the banner's curl asks `/v1/messages` (with `x-api-key` and
/// `anthropic-version`) and works; that model answers on the OpenAI API too, and an
/// OpenAI-only model on `/v1/messages`, translated; an API no translation reaches
/// (embeddings, `count_tokens`) answers "no backend for this API" in the client's JSON,
/// not "does not exist".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_a_curl_in_the_dialect_the_config_serves() -> Result<()> {
    let mock = switchyard_mock::MockServer::start(switchyard_mock::MockOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("switchyard.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{anthropic}"
[[providers.credentials]]
name = "key"
secret = "sk-ant-upstream-0123456789"

[[providers]]
name = "oa"
kind = "openai"
base_url = "{openai}"
[[providers.credentials]]
name = "key"
secret = "sk-upstream-0123456789"

[[models]]
name = "a-claude"
aliases = ["claude-*-haiku-*"]
[[models.backends]]
provider = "claude"

[[models]]
name = "b-gpt"
[[models.backends]]
provider = "oa"
"#,
            anthropic = mock.url(),
            openai = mock.openai_base()
        ),
    )?;
    let file_arg = file.display().to_string();
    let p = start_up(&dir.path().join("data"), &["--config", &file_arg], &[]).await?;
    let line = printed_curl(&p).await?;
    let http = p.addr("http");
    assert!(
        line.contains(&format!("http://{http}/v1/messages ")),
        "an Anthropic-only model is asked on /v1/messages: {line}"
    );
    assert!(
        line.contains("x-api-key: sk-sy-") && line.contains("anthropic-version: 2023-06-01"),
        "{line}"
    );
    let answer = run_curl(&line).await?;
    assert_eq!(answer["type"], "message", "{answer}");
    assert!(
        answer["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{answer}"
    );

    let key = printed_value(&p, "Client API key").context("no key printed")?;
    let c = reqwest::Client::new();
    // Each model answers the other dialect too, translated (issue 17 §3).
    let r = c
        .post(format!("http://{http}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "a-claude", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let r = c
        .post(format!("http://{http}/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": "b-gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["type"], "message", "{v}");
    assert!(v["content"][0]["text"].is_string(), "{v}");
    // A name the model declares as an alias pattern (Claude Code's dated names).
    let r = c
        .post(format!("http://{http}/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(
            &serde_json::json!({"model": "claude-3-5-haiku-20241022", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(
        v["model"], "a-claude",
        "the upstream was asked for the model: {v}"
    );
    // An API no translation reaches: "no backend for this API", not "does not exist".
    let r = c
        .post(format!("http://{http}/v1/embeddings"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "a-claude", "input": "x"}))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["error"]["code"], "no_backend_for_api", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no backend for this API") && !msg.contains("does not exist"),
        "{v}"
    );
    let r = c
        .post(format!("http://{http}/v1/messages/count_tokens"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": "b-gpt", "messages": []}))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "not_found_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no backend for this API"),
        "{v}"
    );
    // A model that does not exist still says so.
    let r = c
        .post(format!("http://{http}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"model": "nope", "messages": []}))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await?;
    assert_eq!(v["error"]["code"], "model_not_found", "{v}");
    stop(p).await
}

/// `up --demo` answers the Anthropic SDK (Claude Code's API) although its backend is
/// OpenAI-kind: `/v1/messages` is translated, plain and streamed, and `GET /v1/models`
/// answers in Anthropic's list format. Needs the repo's `.venv` (scripts/ensure-deps.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_demo_answers_the_anthropic_sdk() -> Result<()> {
    let root = switchyard_tests::repo_root();
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        bail!("{} is missing: run scripts/ensure-deps.sh", python.display());
    }
    let dir = tempfile::tempdir()?;
    let p = start_up(&dir.path().join("data"), &["--demo"], &[]).await?;
    printed_curl(&p).await?;
    let key = printed_value(&p, "Client API key").context("no key printed")?;
    let script = r#"
import os, anthropic
an = anthropic.Anthropic(base_url=os.environ["SY_BASE"], api_key=os.environ["SY_KEY"], max_retries=0)
m = an.messages.create(model="demo", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
assert m.type == "message" and m.content[0].text and m.stop_reason == "end_turn", m
with an.messages.stream(model="demo", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
    text = "".join(s.text_stream)
assert text, "no streamed text"
ids = [x.id for x in an.models.list()]
assert ids == ["demo"], ids
print("ALL OK")
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .env("SY_BASE", format!("http://{}", p.addr("http")))
        .env("SY_KEY", &key)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.stderr_text()
    );
    Ok(())
}

/// Claude Code itself (the real CLI, installed by scripts/ensure-deps.sh into
/// `.tools/claude`) answers through `up --demo`, whose backend is OpenAI-kind: print mode,
/// streamed and translated both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_demo_answers_claude_code() -> Result<()> {
    let root = switchyard_tests::repo_root();
    let claude = root.join(".tools/claude/node_modules/.bin/claude");
    if !claude.exists() {
        bail!(
            "{} is missing: run scripts/ensure-deps.sh (installs @anthropic-ai/claude-code)",
            claude.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let p = start_up(&dir.path().join("data"), &["--demo"], &[]).await?;
    printed_curl(&p).await?;
    let key = printed_value(&p, "Client API key").context("no key printed")?;
    let home = tempfile::tempdir()?;
    let run = Command::new(&claude)
        .args(["--bare", "-p", "Say hello", "--model", "demo"])
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("CLAUDE_CONFIG_DIR", home.path().join(".claude"))
        .env("ANTHROPIC_BASE_URL", format!("http://{}", p.addr("http")))
        .env("ANTHROPIC_API_KEY", &key)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("canned reply from switchyard-mock"),
        "claude -p through up --demo failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        p.stderr_text()
    );
    Ok(())
}
