//! What a newcomer following README hit (issue 21), each pinned by a test against a real
//! control plane: imported client keys, re-applying a file without its secret variables,
//! output piped into `head`, the credential state column and the enable/disable notes.
#![allow(clippy::unwrap_used)]

#[path = "cli_support/mod.rs"]
mod support;

use std::process::Stdio;

use support::*;

#[tokio::test]
async fn import_env_checks_length_and_names_the_flag() {
    let env = Env::start().await.unwrap();
    // Too short: refused before any RPC, naming the flag and the variable, never the value
    // or the RPC's field.
    let short = env.secret("short-tok");
    let out = env
        .run_with(
            &["keys", "create", "jb", "--import-env", "BEARER_TOKEN"],
            &[("BEARER_TOKEN", &short)],
            None,
        )
        .await;
    let err = out.fails(2);
    assert!(err.contains("--import-env BEARER_TOKEN"), "{err}");
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains("import_plaintext"), "{err}");
    let spaced = env.secret("a token with spaces in it");
    let err = env
        .run_with(
            &["keys", "create", "jb", "--import-env", "T"],
            &[("T", &spaced)],
            None,
        )
        .await
        .fails(2)
        .to_string();
    assert!(err.contains("whitespace"), "{err}");

    // README's JetBrains example value (17 characters) is accepted: 16 is the minimum.
    let readme_value = env.secret("your_bearer_token");
    let out = env
        .run_with(
            &["keys", "create", "jb-clients", "--import-env", "BEARER_TOKEN"],
            &[("BEARER_TOKEN", &readme_value)],
            None,
        )
        .await;
    // Its display prefix is 4 characters: 10 would be most of a short imported token.
    assert_eq!(out.ok(), "created key jb-clients (your)\n");
    let exactly = env.secret("0123456789abcdef");
    env.run_with(
        &["keys", "create", "sixteen", "--import-env", "T"],
        &[("T", &exactly)],
        None,
    )
    .await
    .ok();
}

#[tokio::test]
async fn unset_secret_env_keeps_the_stored_secret_of_existing_credentials() {
    let env = Env::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    let doc = |weight: u32| {
        format!(
            "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [[providers.credentials]]\nname = \"api-key\"\nsecret_env = \"SY_NEWCOMER_KEY\"\nweight = {weight}\n"
        )
    };
    std::fs::write(&file, doc(1)).unwrap();
    let path = file.to_str().unwrap();

    // A new credential needs its variable: there is nothing stored to keep.
    let err = env.run(&["apply", "-f", path]).await.fails(1).to_string();
    assert!(
        err.contains(
            "providers.p.credentials.api-key: environment variable SY_NEWCOMER_KEY (secret_env) is not set"
        ),
        "{err}"
    );
    let secret = env.secret("sk-newcomer-stored-secret-42");
    env.run_with(&["apply", "-f", path], &[("SY_NEWCOMER_KEY", &secret)], None)
        .await
        .ok();

    // Re-applied without it: no change, and a note (dry run and real).
    let out = env.run(&["apply", "-f", path, "--dry-run"]).await;
    assert_eq!(out.ok(), "no changes (dry run)\n");
    assert!(
        out.stderr
            .contains("SY_NEWCOMER_KEY (secret_env) is not set; keeping the stored secret"),
        "{}",
        out.stderr
    );
    let out = env.run(&["apply", "-f", path]).await;
    assert_eq!(out.ok(), "no changes\n");
    assert!(out.stderr.contains("keeping the stored secret"), "{}", out.stderr);
    // An edit of another field applies and keeps the secret.
    std::fs::write(&file, doc(4)).unwrap();
    let out = env.run(&["apply", "-f", path]).await;
    assert!(
        out.ok().starts_with("~ credential p/api-key (weight)\n"),
        "{}",
        out.stdout
    );
    let with = env
        .run_unchecked(&["export", "--include-secrets"], &[], None)
        .await;
    assert!(with.ok().contains(&secret), "the stored secret was kept");
    // Setting the variable rotates it.
    let rotated = env.secret("sk-newcomer-rotated-secret-43");
    let out = env
        .run_with(&["apply", "-f", path], &[("SY_NEWCOMER_KEY", &rotated)], None)
        .await;
    assert!(out.ok().contains("credential p/api-key"), "{}", out.stdout);
    assert!(!out.stderr.contains("keeping"), "{}", out.stderr);
    let with = env
        .run_unchecked(&["export", "--include-secrets"], &[], None)
        .await;
    assert!(with.ok().contains(&rotated));
}

#[tokio::test]
async fn credential_state_and_enable_disable_notes() {
    let env = Env::start().await.unwrap();
    env.run(&[
        "providers",
        "add",
        "p",
        "--kind",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
    ])
    .await
    .ok();
    let s = env.secret("sk-state-test-secret-0001");
    env.run_with(
        &["credentials", "add", "p", "--name", "k", "--secret-env", "S"],
        &[("S", &s)],
        None,
    )
    .await
    .ok();
    let out = env.run(&["credentials", "disable", "p", "k"]).await;
    assert_eq!(out.ok(), "updated credential p/k (disabled)\n");
    let table = env.run(&["credentials", "list"]).await.ok().to_string();
    assert!(table.lines().next().unwrap().contains("STATE"), "{table}");
    assert!(table.lines().nth(1).unwrap().contains(" disabled "), "{table}");
    let json = env.run(&["credentials", "list", "-o", "json"]).await.json();
    assert_eq!(json[0]["state"], "disabled");
    let out = env.run(&["credentials", "enable", "p", "k"]).await;
    assert_eq!(out.ok(), "updated credential p/k (enabled)\n");
    // No worker has reported on it: enabled, nothing more is known.
    let json = env.run(&["credentials", "list", "-o", "json"]).await.json();
    assert_eq!(json[0]["state"], "enabled");
    assert_eq!(json[0]["enabled"], true);
}

/// `switchyard ... | head -1` ends quietly: no panic, no "error:", whatever the command.
#[tokio::test]
async fn output_piped_into_head_exits_quietly() {
    let env = Env::start().await.unwrap();
    // Enough rows that the output exceeds a pipe buffer once head has gone.
    for i in 0..40 {
        env.run(&["models", "add", &format!("model-{i:02}-{}", "x".repeat(40))])
            .await
            .ok();
    }
    let bin = switchyard_tests::bin_path("switchyard");
    for cmd in [
        "completions zsh",
        "completions powershell",
        "models list",
        "export",
        "models list -o json",
        "--help",
    ] {
        let script = format!(
            "'{}' {cmd} | head -c 10 >/dev/null; echo \"status=${{PIPESTATUS[0]}}\"",
            bin.display()
        );
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("SWITCHYARD_CONTROL_URL", &env.url)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stderr.is_empty(), "`{cmd} | head` wrote to stderr:\n{stderr}");
        let status: i32 = stdout.trim().trim_start_matches("status=").parse().unwrap();
        // 0 when everything fit into the pipe before head left, 141 (SIGPIPE's status)
        // when the CLI noticed; never a panic (101).
        assert!(status == 0 || status == 141, "`{cmd} | head`: status {status}");
    }
    // A pipe whose reader is already gone: the first write fails, deterministically.
    for cmd in [
        &["completions", "zsh"][..],
        &["models", "list"],
        &["export"],
        &["status", "-o", "json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        // `output()` would replace stdout with its own pipe: spawn, then wait.
        let child = tokio::process::Command::new(&bin)
            .args(cmd)
            .env("SWITCHYARD_CONTROL_URL", &env.url)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(
            out.status.code(),
            Some(141),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A credential the upstream refuses (a 401 confirmed by a probe) shows `ejected` in
/// `credentials list` once the worker has reported it, where it used to show `yes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_credential_shows_ejected() {
    use std::time::Duration;
    use switchyard_mock::{Behavior, MockOptions, MockServer};
    use switchyard_tests::{bin_path, wait_for, Proc};

    let env = Env::start().await.unwrap();
    let revoked = env.secret("sk-upstream-revoked-0123456789");
    let mock = MockServer::start(MockOptions::default()).await.unwrap();
    mock.set_default(Behavior {
        reject_credentials: vec![revoked.clone()],
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin_path("switchyard-worker"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--control",
        &env.url,
    ])
    .args(["--worker-token", WORKER_TOKEN, "--worker-id", "w1"])
    .arg("--state-dir")
    .arg(dir.path());
    let worker = Proc::spawn("worker", cmd).await.unwrap();

    env.run(&[
        "providers",
        "add",
        "p",
        "--kind",
        "openai",
        "--base-url",
        &mock.openai_base(),
        "--no-health",
    ])
    .await
    .ok();
    env.run_with(
        &["credentials", "add", "p", "--name", "k", "--secret-env", "S"],
        &[("S", &revoked)],
        None,
    )
    .await
    .ok();
    env.run(&["models", "add", "m"]).await.ok();
    env.run(&["backends", "add", "m", "--provider", "p"]).await.ok();
    let created = env.run(&["keys", "create", "client"]).await;
    let key = created.ok().lines().nth(1).unwrap().to_string();
    env.secret(&key);

    let c = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", worker.url("http"));
    // The worker serves the config, the upstream refuses the credential, a probe confirms.
    wait_for("a request the upstream refuses", Duration::from_secs(15), || {
        let c = c.clone();
        let (url, key) = (url.clone(), key.clone());
        async move {
            let r = c
                .post(&url)
                .bearer_auth(&key)
                .json(&serde_json::json!({"model": "m", "messages": []}))
                .send()
                .await?;
            // 503 until the worker has the config; then the upstream's refusal (502).
            Ok((r.status() == 502).then_some(()))
        }
    })
    .await
    .unwrap();
    let e = &env;
    let state = wait_for(
        "credentials list to show the ejection",
        Duration::from_secs(15),
        || async move {
            let v = e.run(&["credentials", "list", "-o", "json"]).await.json();
            let s = v[0]["state"].as_str().unwrap_or_default().to_string();
            Ok((s != "healthy" && s != "enabled").then_some(s))
        },
    )
    .await
    .unwrap();
    assert_eq!(state, "ejected");
    let table = env.run(&["credentials", "list"]).await.ok().to_string();
    assert!(table.lines().nth(1).unwrap().contains(" ejected "), "{table}");
    // An operator's disable wins over what the fleet reports.
    env.run(&["credentials", "disable", "p", "k"]).await.ok();
    let v = env.run(&["credentials", "list", "-o", "json"]).await.json();
    assert_eq!(v[0]["state"], "disabled");
}
