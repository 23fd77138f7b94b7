//! The `switchyard` CLI against a real control plane: every admin command's happy path
//! and its main errors, exit codes, output formats, and that secrets never leak.
#![allow(clippy::unwrap_used)]

#[path = "cli_support/mod.rs"]
mod support;

use support::*;

#[tokio::test]
async fn providers_add_get_update_list_remove() {
    let env = Env::start().await.unwrap();
    let out = env
        .run(&[
            "providers",
            "add",
            "jb",
            "--kind",
            "openai",
            "--base-url",
            "https://jb.example.com/v1",
            "--timeout",
            "90s",
            "--credential-strategy",
            "random",
            "--auth-header",
            "grazie-authenticate-jwt",
            "--header",
            "x-agent=switchyard",
            "--health-probe",
            "chat:gpt-4o-mini",
            "--health-interval",
            "15s",
            "--description",
            "JetBrains",
        ])
        .await;
    assert_eq!(out.ok(), "created provider jb\n");

    let p = env.run(&["providers", "get", "jb", "-o", "json"]).await.json();
    assert_eq!(p["name"], "jb");
    assert_eq!(p["request_timeout_ms"], 90_000);
    assert_eq!(p["credential_strategy"], "random");
    assert_eq!(p["auth_header"], "grazie-authenticate-jwt");
    assert_eq!(p["headers"]["x-agent"], "switchyard");
    assert_eq!(p["health"]["probe"], "chat:gpt-4o-mini");
    assert_eq!(p["health"]["interval_ms"], 15_000);
    assert_eq!(p["health"]["enabled"], true);
    assert_eq!(p["enabled"], true);

    // Update touches only what was given.
    let out = env
        .run(&[
            "providers",
            "update",
            "jb",
            "--timeout",
            "30s",
            "--no-health",
            "--disable",
        ])
        .await;
    assert!(out.ok().starts_with("updated provider jb"), "{}", out.stdout);
    let p = env.run(&["providers", "get", "jb", "-o", "json"]).await.json();
    assert_eq!(p["request_timeout_ms"], 30_000);
    assert_eq!(p["health"]["enabled"], false);
    assert_eq!(p["enabled"], false);
    assert_eq!(p["base_url"], "https://jb.example.com/v1");
    assert_eq!(p["health"]["probe"], "chat:gpt-4o-mini");
    assert_eq!(p["credential_strategy"], "random");

    // Table output is aligned; get shows a detail view.
    env.run(&[
        "providers",
        "add",
        "a",
        "--kind",
        "anthropic",
        "--base-url",
        "https://api.anthropic.com",
    ])
    .await
    .ok();
    let table = env.run(&["providers", "list"]).await.ok().to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME  KIND"), "{table}");
    assert!(lines[1].starts_with("a     anthropic"), "{table}");
    assert!(lines[2].starts_with("jb    openai"), "{table}");
    let col = lines[0].find("BASE_URL").unwrap();
    assert_eq!(&lines[2][col..col + 8], "https://", "{table}");
    let detail = env.run(&["providers", "get", "jb"]).await.ok().to_string();
    assert!(
        detail.contains("base_url:") && detail.contains("https://jb.example.com/v1"),
        "{detail}"
    );

    let list = env.run(&["providers", "list", "-o", "json"]).await.json();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Errors.
    let err = env
        .run(&[
            "providers",
            "add",
            "jb",
            "--kind",
            "openai",
            "--base-url",
            "https://x/v1",
        ])
        .await
        .fails(1)
        .to_string();
    assert!(
        err.starts_with("error: ") && err.contains("jb") && err.lines().count() == 1,
        "{err}"
    );
    let err = env
        .run(&[
            "providers",
            "add",
            "bad",
            "--kind",
            "grpc",
            "--base-url",
            "https://x/v1",
        ])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("kind") && err.lines().count() == 1, "{err}");
    let err = env
        .run(&[
            "providers",
            "add",
            "bad2",
            "--kind",
            "openai",
            "--base-url",
            "not a url",
        ])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("base_url"), "{err}");
    let err = env.run(&["providers", "update", "jb"]).await.fails(2).to_string();
    assert!(err.contains("nothing to update"), "{err}");

    let out = env.run(&["providers", "remove", "jb"]).await;
    assert!(
        out.ok().starts_with("removed provider jb (config version "),
        "{}",
        out.stdout
    );
    let err = env.run(&["providers", "get", "jb"]).await.fails(1).to_string();
    assert!(err.contains("jb"), "{err}");
}

#[tokio::test]
async fn credentials_from_env_file_stdin_and_argv_never_leak() {
    let env = Env::start().await.unwrap();
    env.run(&[
        "providers",
        "add",
        "openai",
        "--kind",
        "openai",
        "--base-url",
        "https://api.openai.com/v1",
    ])
    .await
    .ok();
    let from_env = env.secret("sk-from-env-5b7c1e0f9a2d4c6e8b1a");
    let from_file = env.secret("sk-from-file-93f1d2a4b6c8e0f2a4b6");
    let from_stdin = env.secret("sk-from-stdin-7a9c1e3b5d7f9a1c3e5b");
    let from_argv = env.secret("sk-from-argv-2c4e6a8b0d2f4a6c8e0b");

    let out = env
        .run_with(
            &["credentials", "add", "openai", "--secret-env", "MY_KEY"],
            &[("MY_KEY", &from_env)],
            None,
        )
        .await;
    assert_eq!(out.ok(), "created credential openai/key-1\n");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.txt");
    std::fs::write(&file, format!("{from_file}\n")).unwrap();
    env.run(&[
        "credentials",
        "add",
        "openai",
        "--name",
        "filed",
        "--weight",
        "3",
        "--secret-file",
        file.to_str().unwrap(),
    ])
    .await
    .ok();

    // `tokens` is an alias; stdin loses its trailing newline.
    env.run_with(
        &["tokens", "add", "openai", "--secret", "-"],
        &[],
        Some(&format!("{from_stdin}\n")),
    )
    .await
    .ok();

    let out = env
        .run(&[
            "credentials",
            "add",
            "openai",
            "--name",
            "argv",
            "--secret",
            &from_argv,
        ])
        .await;
    out.ok();
    assert!(
        out.stderr.contains("warning:") && out.stderr.contains("ps"),
        "{}",
        out.stderr
    );

    let creds = env
        .run(&["credentials", "list", "openai", "-o", "json"])
        .await
        .json();
    let creds = creds.as_array().unwrap();
    let names: Vec<&str> = creds.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["argv", "filed", "key-1", "key-2"]);
    assert_eq!(creds[1]["weight"], 3);
    // Redaction shows at most the last 4 characters, which proves the stored value.
    assert_eq!(
        creds[1]["secret_redacted"]
            .as_str()
            .unwrap()
            .trim_start_matches('…'),
        "a4b6"
    );
    assert!(creds[3]["secret_redacted"].as_str().unwrap().ends_with("3e5b"));
    let table = env.run(&["tokens", "list"]).await.ok().to_string();
    assert_eq!(table.lines().count(), 5, "{table}");

    env.run(&["credentials", "disable", "openai", "argv"]).await.ok();
    let creds = env.run(&["credentials", "list", "-o", "json"]).await.json();
    let argv = creds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "argv")
        .unwrap()
        .clone();
    assert_eq!(argv["enabled"], false);
    env.run(&["credentials", "enable", "openai", "argv"]).await.ok();
    let rotated = env.secret("sk-rotated-0d1e2f3a4b5c6d7e8f9a");
    env.run_with(
        &[
            "credentials",
            "update",
            "openai",
            "argv",
            "--secret-env",
            "NEW",
            "--weight",
            "5",
        ],
        &[("NEW", &rotated)],
        None,
    )
    .await
    .ok();
    let creds = env
        .run(&["credentials", "list", "openai", "-o", "json"])
        .await
        .json();
    let argv = &creds.as_array().unwrap()[0];
    assert_eq!(argv["enabled"], true);
    assert_eq!(argv["weight"], 5);
    assert!(argv["secret_redacted"].as_str().unwrap().ends_with("8f9a"));

    // The secrets stay out of get and export too (checked by `run`).
    env.run(&["providers", "get", "openai"]).await.ok();
    env.run(&["providers", "get", "openai", "-o", "json"]).await.ok();
    env.run(&["export"]).await.ok();

    // Errors.
    let err = env
        .run(&[
            "credentials",
            "add",
            "openai",
            "--secret-env",
            "SURELY_UNSET_VAR_42",
        ])
        .await
        .fails(1)
        .to_string();
    assert_eq!(
        err,
        "error: environment variable SURELY_UNSET_VAR_42 (--secret-env) is not set\n"
    );
    let err = env
        .run(&["credentials", "add", "openai"])
        .await
        .fails(2)
        .to_string();
    assert!(err.contains("--secret-env"), "{err}");
    env.run(&[
        "credentials",
        "add",
        "openai",
        "--secret-env",
        "A",
        "--secret-file",
        "/x",
    ])
    .await
    .fails(2);
    let err = env
        .run_with(
            &["credentials", "add", "nope", "--name", "k", "--secret-env", "K"],
            &[("K", &from_env)],
            None,
        )
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("nope") && err.lines().count() == 1, "{err}");
    let err = env
        .run_with(
            &["credentials", "add", "openai", "--name", "key-1", "--secret", "-"],
            &[],
            Some(&format!("{from_stdin}\n")),
        )
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("key-1"), "{err}");

    env.run(&["credentials", "remove", "openai", "filed"]).await.ok();
    let creds = env.run(&["credentials", "list", "-o", "json"]).await.json();
    assert_eq!(creds.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn models_and_backends() {
    let env = Env::start().await.unwrap();
    env.run(&[
        "providers",
        "add",
        "openai",
        "--kind",
        "openai",
        "--base-url",
        "https://api.openai.com/v1",
    ])
    .await
    .ok();
    env.run(&[
        "providers",
        "add",
        "claude",
        "--kind",
        "anthropic",
        "--base-url",
        "https://api.anthropic.com",
    ])
    .await
    .ok();
    let out = env
        .run(&[
            "models",
            "add",
            "smart",
            "--strategy",
            "weighted_random",
            "--max-retries",
            "3",
            "--per-try-timeout",
            "20s",
            "--affinity",
            "header:x-session-id",
        ])
        .await;
    assert_eq!(out.ok(), "created model smart\n");

    let out = env
        .run(&[
            "backends",
            "add",
            "smart",
            "--provider",
            "openai",
            "--upstream-model",
            "gpt-4o",
            "--weight",
            "3",
        ])
        .await;
    assert_eq!(out.ok(), "created backend smart/openai -> openai gpt-4o\n");
    env.run(&[
        "backends",
        "add",
        "smart",
        "--provider",
        "claude",
        "--name",
        "backup",
        "--upstream-model",
        "claude-sonnet-4-5",
        "--priority",
        "1",
    ])
    .await
    .ok();

    // Validation errors are one line naming the object and field, exit 1.
    let err = env
        .run(&[
            "backends",
            "add",
            "smart",
            "--provider",
            "openai",
            "--name",
            "zero",
            "--weight",
            "0",
        ])
        .await
        .fails(1)
        .to_string();
    assert_eq!(err, "error: backend smart/zero: weight must be > 0\n");
    let err = env
        .run(&["models", "add", "m2", "--strategy", "fastest"])
        .await
        .fails(1)
        .to_string();
    assert!(
        err.contains("strategy") && err.contains("fastest") && err.lines().count() == 1,
        "{err}"
    );
    let err = env
        .run(&["backends", "add", "smart", "--provider", "ghost", "--name", "g"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("ghost"), "{err}");
    env.run(&["models", "add", "m3", "--affinity", "cookie"])
        .await
        .fails(2);

    let m = env.run(&["models", "get", "smart", "-o", "json"]).await.json();
    assert_eq!(m["strategy"], "weighted_random");
    assert_eq!(m["max_retries"], 3);
    assert_eq!(m["per_try_timeout_ms"], 20_000);
    assert_eq!(m["affinity"], "header:x-session-id");
    let bs = m["backends"].as_array().unwrap();
    assert_eq!(bs.len(), 2);
    assert_eq!(bs[0]["name"], "openai");
    assert_eq!(bs[0]["weight"], 3);
    assert_eq!(bs[1]["name"], "backup");
    assert_eq!(bs[1]["priority"], 1);

    env.run(&[
        "models",
        "update",
        "smart",
        "--strategy",
        "failover",
        "--affinity",
        "none",
    ])
    .await
    .ok();
    env.run(&[
        "backends",
        "update",
        "smart",
        "backup",
        "--priority",
        "0",
        "--weight",
        "2",
        "--disable",
    ])
    .await
    .ok();
    let m = env.run(&["models", "get", "smart", "-o", "json"]).await.json();
    assert_eq!(m["strategy"], "failover");
    assert_eq!(m["affinity"], "none");
    assert_eq!(m["max_retries"], 3, "untouched by the update");
    let backup = m["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "backup")
        .unwrap()
        .clone();
    assert_eq!(
        (backup["priority"].clone(), backup["weight"].clone()),
        (0.into(), 2.into())
    );
    assert_eq!(backup["enabled"], false);
    assert_eq!(backup["upstream_model"], "claude-sonnet-4-5");

    // Aliases: set (the given set replaces the old one), shown, unique, cleared.
    env.run(&[
        "models",
        "update",
        "smart",
        "--alias",
        "claude-*-haiku-*",
        "--alias",
        "smart-latest",
    ])
    .await
    .ok();
    let m = env.run(&["models", "get", "smart", "-o", "json"]).await.json();
    assert_eq!(
        m["aliases"],
        serde_json::json!(["claude-*-haiku-*", "smart-latest"])
    );
    let text = env.run(&["models", "get", "smart"]).await.ok().to_string();
    assert!(text.contains("claude-*-haiku-*, smart-latest"), "{text}");
    let err = env
        .run(&["models", "add", "m4", "--alias", "smart-latest"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("smart-latest") && err.lines().count() == 1, "{err}");
    env.run(&["models", "update", "smart", "--no-aliases"]).await.ok();
    let m = env.run(&["models", "get", "smart", "-o", "json"]).await.json();
    assert!(m.get("aliases").is_none(), "{m}");
    // `default_max_tokens` (translated requests to Anthropic): set, then back to the default.
    env.run(&["models", "update", "smart", "--default-max-tokens", "2048"])
        .await
        .ok();
    let m = env.run(&["models", "get", "smart", "-o", "json"]).await.json();
    assert_eq!(m["default_max_tokens"], 2048, "{m}");
    env.run(&["models", "update", "smart", "--default-max-tokens", "0"])
        .await
        .ok();
    let m = env.run(&["models", "get", "smart", "-o", "json"]).await.json();
    assert!(m.get("default_max_tokens").is_none(), "{m}");

    let table = env.run(&["models", "list"]).await.ok().to_string();
    assert!(
        table.lines().nth(1).unwrap().starts_with("smart  failover  2"),
        "{table}"
    );
    let table = env.run(&["backends", "list", "smart"]).await.ok().to_string();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.starts_with("MODEL  NAME    PROVIDER  UPSTREAM_MODEL"),
        "{table}"
    );
    let all = env.run(&["backends", "list", "-o", "json"]).await.json();
    assert_eq!(all.as_array().unwrap().len(), 2);

    // A provider in use cannot be removed; the error names the backend.
    let err = env
        .run(&["providers", "remove", "claude"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("smart/backup"), "{err}");
    env.run(&["backends", "remove", "smart", "backup"]).await.ok();
    env.run(&["providers", "remove", "claude"]).await.ok();
    let err = env
        .run(&["backends", "remove", "smart", "backup"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("backup"), "{err}");
    env.run(&["models", "remove", "smart"]).await.ok();
    let models = env.run(&["models", "list", "-o", "json"]).await.json();
    assert!(models.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn keys_create_once_list_revoke_remove() {
    let env = Env::start().await.unwrap();
    env.run(&[
        "providers",
        "add",
        "openai",
        "--kind",
        "openai",
        "--base-url",
        "https://api.openai.com/v1",
    ])
    .await
    .ok();
    env.run(&["models", "add", "gpt-4o"]).await.ok();

    let out = env
        .run(&[
            "keys",
            "create",
            "team-a",
            "--models",
            "gpt-4o",
            "--expires",
            "30d",
            "--description",
            "A",
        ])
        .await;
    let stdout = out.ok().to_string();
    let plaintext = stdout
        .lines()
        .find(|l| l.starts_with("sk-sy-"))
        .expect("plaintext printed")
        .to_string();
    assert!(plaintext.len() >= 20, "{plaintext}");
    assert!(out.stderr.contains("shown only once"), "{}", out.stderr);
    env.secret(&plaintext);

    let keys = env.run(&["keys", "list", "-o", "json"]).await.json();
    let k = &keys.as_array().unwrap()[0];
    assert_eq!(k["name"], "team-a");
    assert_eq!(k["allowed_models"][0], "gpt-4o");
    assert!(plaintext.starts_with(k["prefix"].as_str().unwrap()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expires = k["expires_at_ms"].as_i64().unwrap();
    let thirty_days = 30 * 86_400_000;
    assert!(
        (expires - (now + thirty_days)).abs() < 120_000,
        "expires {expires}, now {now}"
    );
    let table = env.run(&["keys", "list"]).await.ok().to_string();
    assert!(table.lines().nth(1).unwrap().contains("active"), "{table}");

    // JSON create prints the plaintext as a field, once.
    let created = env.run(&["keys", "create", "team-b", "-o", "json"]).await.json();
    let b_plain = created["plaintext"].as_str().unwrap().to_string();
    env.secret(&b_plain);
    assert_eq!(created["key"]["name"], "team-b");

    // Importing an existing token prints no plaintext.
    let imported = env.secret("legacy-shared-token-0123456789abcdef");
    let out = env
        .run_with(
            &["keys", "create", "legacy", "--import-env", "LEGACY"],
            &[("LEGACY", &imported)],
            None,
        )
        .await;
    out.ok();

    env.run(&[
        "keys",
        "update",
        "team-a",
        "--models",
        "",
        "--expires",
        "never",
        "--description",
        "B",
    ])
    .await
    .ok();
    let k = env.run(&["keys", "get", "team-a", "-o", "json"]).await.json();
    assert_eq!(k["allowed_models"].as_array().unwrap().len(), 0);
    assert_eq!(k["expires_at_ms"], 0);
    assert_eq!(k["description"], "B");
    env.run(&["keys", "update", "team-a", "--disable"]).await.ok();
    let table = env.run(&["keys", "list"]).await.ok().to_string();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("team-a") && l.contains("disabled")),
        "{table}"
    );
    env.run(&["keys", "update", "team-a"]).await.fails(2);

    env.run(&["keys", "revoke", "team-a"]).await.ok();
    let err = env
        .run(&["keys", "update", "team-a", "--enable"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("revoked"), "{err}");
    let k = env.run(&["keys", "get", "team-a", "-o", "json"]).await.json();
    assert_eq!(k["revoked"], true);
    let table = env.run(&["keys", "list"]).await.ok().to_string();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("team-a") && l.contains("revoked")),
        "{table}"
    );

    // Errors.
    let err = env.run(&["keys", "create", "team-b"]).await.fails(1).to_string();
    assert!(err.contains("team-b"), "{err}");
    let err = env
        .run(&["keys", "create", "Bad Name"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("Bad Name") && err.lines().count() == 1, "{err}");
    env.run(&["keys", "create", "y", "--expires", "someday"])
        .await
        .fails(2);

    env.run(&["keys", "remove", "team-b"]).await.ok();
    let keys = env.run(&["keys", "list", "-o", "json"]).await.json();
    let names: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["legacy", "team-a"]);
}

/// The provider's pass-through settings and the key's pin permission: flags, JSON and
/// table views, replace-on-update, clearing, and validation errors that name the entry.
#[tokio::test]
async fn provider_passthrough_and_key_pin_flags() {
    let env = Env::start().await.unwrap();
    env.run(&[
        "providers",
        "add",
        "oa",
        "--kind",
        "openai",
        "--base-url",
        "https://api.openai.com/v1",
        "--allow-path",
        "/v1/files",
        "--allow-path",
        "/v1/fine_tuning/*",
        "--forward-header",
        "OpenAI-Organization",
    ])
    .await
    .ok();
    let p = env.run(&["providers", "get", "oa", "-o", "json"]).await.json();
    assert_eq!(
        p["allow_paths"],
        serde_json::json!(["/v1/files", "/v1/fine_tuning/*"])
    );
    assert_eq!(p["forward_headers"], serde_json::json!(["openai-organization"]));
    let detail = env.run(&["providers", "get", "oa"]).await.ok().to_string();
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("allow_paths") && l.contains("/v1/files, /v1/fine_tuning/*")),
        "{detail}"
    );
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("forward_headers") && l.contains("openai-organization")),
        "{detail}"
    );

    // Update replaces the given list only; `''` clears it.
    env.run(&["providers", "update", "oa", "--allow-path", "/v1/batches"])
        .await
        .ok();
    let p = env.run(&["providers", "get", "oa", "-o", "json"]).await.json();
    assert_eq!(p["allow_paths"], serde_json::json!(["/v1/batches"]));
    assert_eq!(p["forward_headers"], serde_json::json!(["openai-organization"]));
    env.run(&["providers", "update", "oa", "--forward-header", ""])
        .await
        .ok();
    let p = env.run(&["providers", "get", "oa", "-o", "json"]).await.json();
    assert_eq!(p["forward_headers"], serde_json::json!([]));
    assert_eq!(p["allow_paths"], serde_json::json!(["/v1/batches"]));

    // Bad values: the error names the provider and the entry; nothing changes.
    let err = env
        .run(&[
            "providers",
            "update",
            "oa",
            "--allow-path",
            "/v1/files",
            "--allow-path",
            "/v1/../admin",
        ])
        .await
        .fails(1)
        .to_string();
    assert!(
        err.contains("provider oa: allow_paths[1]") && err.contains("`..`"),
        "{err}"
    );
    for bad in ["/v1/files/%2e%2e", "/files", "/v1/a*"] {
        let err = env
            .run(&["providers", "update", "oa", "--allow-path", bad])
            .await
            .fails(1)
            .to_string();
        assert!(err.contains("allow_paths[0]"), "{bad}: {err}");
    }
    let err = env
        .run(&["providers", "update", "oa", "--forward-header", "authorization"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("forward_headers[0]"), "{err}");
    let p = env.run(&["providers", "get", "oa", "-o", "json"]).await.json();
    assert_eq!(p["allow_paths"], serde_json::json!(["/v1/batches"]));

    // Keys: pinning is off unless granted.
    let k = env.run(&["keys", "create", "plain", "-o", "json"]).await.json();
    env.secret(k["plaintext"].as_str().unwrap());
    assert_eq!(k["key"]["allow_pin"], false);
    let k = env
        .run(&["keys", "create", "ops", "--allow-pin", "-o", "json"])
        .await
        .json();
    env.secret(k["plaintext"].as_str().unwrap());
    assert_eq!(k["key"]["allow_pin"], true);
    let table = env.run(&["keys", "list"]).await.ok().to_string();
    assert!(table.lines().next().unwrap().contains("PIN"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ops ") && l.contains(" yes ")),
        "{table}"
    );
    env.run(&["keys", "update", "plain", "--allow-pin"]).await.ok();
    let k = env.run(&["keys", "get", "plain", "-o", "json"]).await.json();
    assert_eq!(k["allow_pin"], true);
    env.run(&["keys", "update", "plain", "--no-allow-pin"]).await.ok();
    let k = env.run(&["keys", "get", "plain", "-o", "json"]).await.json();
    assert_eq!(k["allow_pin"], false);
    env.run(&["keys", "update", "plain", "--allow-pin", "--no-allow-pin"])
        .await
        .fails(2);
}

#[tokio::test]
async fn status_and_workers() {
    let env = Env::start().await.unwrap();
    env.run(&["models", "add", "m"]).await.ok();
    let s = env.run(&["status", "-o", "json"]).await.json();
    assert_eq!(s["store"], "sqlite");
    assert!(s["version"].as_u64().unwrap() >= 1);
    assert_eq!(s["workers_connected"], 0);
    assert_eq!(s["control_url"], env.url.as_str());
    let text = env.run(&["status"]).await.ok().to_string();
    assert!(text.contains("store:") && text.contains("sqlite"), "{text}");
    assert!(
        text.contains("workers in sync:") && text.contains("0/0"),
        "{text}"
    );

    let w = env.run(&["workers", "list", "-o", "json"]).await.json();
    assert_eq!(w["current_version"], s["version"]);
    assert!(w["workers"].as_array().unwrap().is_empty());
    let text = env.run(&["workers", "list"]).await.ok().to_string();
    assert!(text.contains("WORKER") && text.contains("APPLIED"), "{text}");
}

/// A worker stand-in: a real `Watch` stream that acknowledges every snapshot it gets.
async fn fake_worker(
    grpc_url: String,
    id: &str,
) -> (
    futures::channel::mpsc::UnboundedSender<switchyard_proto::WatchRequest>,
    tonic::Streaming<switchyard_proto::Snapshot>,
) {
    use switchyard_proto::{watch_request::Msg, worker_api_client::WorkerApiClient, Hello, WatchRequest};
    let mut client = WorkerApiClient::connect(grpc_url).await.unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(WatchRequest {
        msg: Some(Msg::Hello(Hello {
            worker_id: id.to_string(),
            address: "127.0.0.1:8080".into(),
            software_version: "test".into(),
            ..Default::default()
        })),
    })
    .unwrap();
    let mut req = tonic::Request::new(rx);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {WORKER_TOKEN}").parse().unwrap());
    let stream = client.watch(req).await.unwrap().into_inner();
    (tx, stream)
}

#[tokio::test]
async fn workers_list_and_status_show_sync_state() {
    use switchyard_proto::{watch_request::Msg, Ack, WatchRequest};
    let env = Env::start().await.unwrap();
    env.run(&["models", "add", "m"]).await.ok();
    let (tx, mut snapshots) = fake_worker(env.url.clone(), "w-1").await;
    let snap = snapshots.message().await.unwrap().unwrap();
    tx.unbounded_send(WatchRequest {
        msg: Some(Msg::Ack(Ack {
            version: snap.version,
            hash: snap.hash.clone(),
        })),
    })
    .unwrap();

    let w = switchyard_tests::wait_for(
        "the worker's ack to show",
        std::time::Duration::from_secs(10),
        || async {
            let j = env.run(&["workers", "list", "-o", "json"]).await.json();
            Ok((j["workers"][0]["applied_version"] == snap.version).then_some(j))
        },
    )
    .await
    .unwrap();
    let w0 = &w["workers"][0];
    assert_eq!(w0["worker_id"], "w-1");
    assert_eq!(w0["connected"], true);
    assert_eq!(w0["in_sync"], true);
    assert_eq!(w0["address"], "127.0.0.1:8080");
    assert!(w0["last_seen_ms"].as_i64().unwrap() > 0);
    let table = env.run(&["workers", "list"]).await.ok().to_string();
    let row = table
        .lines()
        .find(|l| l.starts_with("w-1"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("127.0.0.1:8080") && row.contains(" yes "), "{table}");
    let s = env.run(&["status", "-o", "json"]).await.json();
    assert_eq!(
        (s["workers_in_sync"].clone(), s["workers_connected"].clone()),
        (1.into(), 1.into())
    );
    assert!(env.run(&["status"]).await.ok().contains("1/1 connected"));

    // A change the worker has not acknowledged yet: connected but out of sync.
    env.run(&["models", "add", "m2"]).await.ok();
    let newer = snapshots.message().await.unwrap().unwrap();
    assert!(newer.version > snap.version);
    let s = env.run(&["status", "-o", "json"]).await.json();
    assert_eq!(s["workers_in_sync"], 0);
    let w = env.run(&["workers", "list", "-o", "json"]).await.json();
    assert_eq!(w["workers"][0]["in_sync"], false);
    assert_eq!(w["current_version"], newer.version);
    drop(tx);
}

#[tokio::test]
async fn connection_auth_and_usage_errors() {
    let env = Env::start().await.unwrap();

    // Nothing listens on a port we bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = run_cmd(
        {
            let mut c = cli();
            c.args(["--control", &url, "providers", "list"]);
            c
        },
        None,
    )
    .await;
    let err = out.fails(1);
    assert!(
        err.starts_with(&format!("error: cannot reach the control plane at {url}: ")),
        "{err}"
    );
    assert!(
        err.contains("switchyard-control") && err.contains("--control"),
        "{err}"
    );

    // The env var works the same way.
    let out = run_cmd(
        {
            let mut c = cli();
            c.env("SWITCHYARD_CONTROL_URL", &url).arg("status");
            c
        },
        None,
    )
    .await;
    assert!(out.fails(1).contains(&url));

    // Missing or wrong admin token.
    let out = run_cmd(
        {
            let mut c = cli();
            c.args(["--control", &env.url, "providers", "list"]);
            c
        },
        None,
    )
    .await;
    let err = out.fails(1);
    assert!(err.contains("--token") && err.lines().count() == 1, "{err}");
    let out = run_cmd(
        {
            let mut c = cli();
            c.args(["--control", &env.url, "--token", "wrong-token", "status"]);
            c
        },
        None,
    )
    .await;
    assert!(out.fails(1).contains("--token"));
    let out = run_cmd(
        {
            let mut c = cli();
            c.args(["--control", &env.url, "--token", ADMIN_TOKEN, "status"]);
            c
        },
        None,
    )
    .await;
    out.ok();

    // Usage errors exit 2.
    env.run(&["providers", "frobnicate"]).await.fails(2);
    env.run(&["providers", "add", "x"]).await.fails(2);
    env.run(&["backends", "add", "m", "--provider", "p", "--weight", "many"])
        .await
        .fails(2);
    env.run(&["-o", "yaml", "status"]).await.fails(2);
    env.run(&["models", "update", "m", "--enable", "--disable"])
        .await
        .fails(2);
    env.run(&[
        "providers",
        "add",
        "x",
        "--kind",
        "openai",
        "--base-url",
        "u",
        "--timeout",
        "soon",
    ])
    .await
    .fails(2);
}

#[tokio::test]
async fn help_for_every_command_and_completions() {
    let paths: &[&[&str]] = &[
        &[],
        &["providers"],
        &["providers", "add"],
        &["providers", "list"],
        &["providers", "get"],
        &["providers", "update"],
        &["providers", "remove"],
        &["credentials"],
        &["credentials", "add"],
        &["credentials", "list"],
        &["credentials", "update"],
        &["credentials", "enable"],
        &["credentials", "disable"],
        &["credentials", "remove"],
        &["tokens", "add"],
        &["models"],
        &["models", "add"],
        &["models", "list"],
        &["models", "get"],
        &["models", "update"],
        &["models", "remove"],
        &["backends"],
        &["backends", "add"],
        &["backends", "list"],
        &["backends", "update"],
        &["backends", "remove"],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "get"],
        &["keys", "update"],
        &["keys", "revoke"],
        &["keys", "remove"],
        &["apply"],
        &["export"],
        &["workers"],
        &["workers", "list"],
        &["status"],
        &["completions"],
    ];
    for path in paths {
        let mut c = cli();
        c.args(*path).arg("--help");
        let out = run_cmd(c, None).await;
        let text = out.ok();
        assert!(text.contains("Usage: switchyard"), "{path:?}: {text}");
        assert!(
            text.contains("--control"),
            "{path:?} lacks the global flags: {text}"
        );
    }
    let mut c = cli();
    c.args(["credentials", "add", "--help"]);
    let text = run_cmd(c, None).await.ok().to_string();
    assert!(
        text.contains("--secret-env") && text.contains("--secret-file") && text.contains("stdin"),
        "{text}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let mut c = cli();
        c.args(["completions", shell]);
        let out = run_cmd(c, None).await;
        let script = out.ok();
        assert!(
            script.contains("providers") && script.contains("credentials"),
            "{shell}"
        );
    }
}

/// `providers add|update --proxy … --proxy-password-env … --ca-file …`: the proxy password
/// is write-only (never in any output), the rest shows in `get`; clearing the proxy
/// clears its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_egress_flags() {
    let env = Env::start().await.unwrap();
    let pw = env.secret("proxy-password-0123456789");
    env.run_with(
        &[
            "providers",
            "add",
            "vllm",
            "--kind",
            "openai",
            "--base-url",
            "https://vllm.internal/v1",
            "--proxy",
            "http://egress@proxy.corp:3128",
            "--proxy-password-env",
            "SY_PROXY_PW",
            "--ca-file",
            "/etc/switchyard/private-ca.pem",
        ],
        &[("SY_PROXY_PW", &pw)],
        None,
    )
    .await
    .ok();
    let p = env.run(&["providers", "get", "vllm", "-o", "json"]).await.json();
    assert_eq!(p["proxy"], "http://egress@proxy.corp:3128");
    assert_eq!(p["proxy_password"], "…6789", "redacted by control");
    assert_eq!(p["ca_file"], "/etc/switchyard/private-ca.pem");
    let detail = env.run(&["providers", "get", "vllm"]).await.ok().to_string();
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("proxy") && l.contains("proxy.corp:3128")),
        "{detail}"
    );
    env.run(&["export", "--include-secrets"]).await.ok();

    // Control names the field it refuses.
    let out = env
        .run_unchecked(
            &["providers", "update", "vllm", "--proxy", "https://proxy.corp"],
            &[],
            None,
        )
        .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("proxy: scheme `https`"), "{}", out.stderr);
    let out = env
        .run_unchecked(
            &["providers", "update", "vllm", "--client-cert-file", "/c.pem"],
            &[],
            None,
        )
        .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("client_key_file"), "{}", out.stderr);

    // No proxy any more: no password either.
    env.run(&["providers", "update", "vllm", "--proxy", ""])
        .await
        .ok();
    let p = env.run(&["providers", "get", "vllm", "-o", "json"]).await.json();
    assert!(
        p.get("proxy").is_none() && p.get("proxy_password").is_none(),
        "{p}"
    );
}

#[tokio::test]
async fn limits_create_list_update_delete_and_teams() {
    let env = Env::start().await.unwrap();
    env.run(&["keys", "create", "alice", "--team", "research"])
        .await
        .ok();
    let k = env.run(&["keys", "get", "alice", "-o", "json"]).await.json();
    assert_eq!(k["team"], "research");
    let out = env
        .run(&[
            "limits",
            "create",
            "alice-rpm",
            "--scope",
            "key:alice",
            "--kind",
            "requests",
            "--window",
            "minute",
            "--amount",
            "100",
        ])
        .await;
    assert_eq!(
        out.ok(),
        "created limit alice-rpm: key:alice 100 requests per minute (enforce)\n"
    );
    let out = env
        .run(&[
            "limits",
            "create",
            "research-budget",
            "--scope",
            "team:research",
            "--kind",
            "spend",
            "--window",
            "month",
            "--amount",
            "25.50",
            "--mode",
            "observe",
            "--on-outage",
            "open",
        ])
        .await;
    assert_eq!(
        out.ok(),
        "created limit research-budget: team:research 25.500000 spend per month (observe)\n"
    );
    // The list shows money like `spend` does, and every column.
    let table = env.run(&["limits"]).await.ok().to_string();
    let head = table.lines().next().unwrap();
    for col in ["NAME", "SCOPE", "KIND", "WINDOW", "AMOUNT", "USED", "%", "MODE"] {
        assert!(head.contains(col), "{table}");
    }
    let budget = table.lines().find(|l| l.starts_with("research-budget")).unwrap();
    assert!(
        budget.contains("25.500000") && budget.contains("0.000000") && budget.contains("0%"),
        "{table}"
    );
    let ls = env.run(&["limits", "list", "-o", "json"]).await.json();
    let b = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "research-budget")
        .unwrap();
    assert_eq!(b["amount"], 25_500_000_000u64);
    assert_eq!(b["on_outage"], "open");

    // Update: the amount is read in the limit's own unit.
    let out = env
        .run(&["limits", "update", "research-budget", "--amount", "30"])
        .await;
    assert!(out.ok().contains("30.000000 spend"), "{}", out.stdout);
    let err = env
        .run(&["limits", "update", "alice-rpm", "--amount", "1.5"])
        .await
        .fails(2)
        .to_string();
    assert!(err.contains("--amount") && err.contains("whole number"), "{err}");
    let err = env
        .run(&["limits", "update", "alice-rpm"])
        .await
        .fails(2)
        .to_string();
    assert!(err.contains("nothing to update"), "{err}");
    // The control plane's validation names the field.
    let err = env
        .run(&[
            "limits",
            "create",
            "x",
            "--scope",
            "key:nobody",
            "--kind",
            "requests",
            "--window",
            "day",
            "--amount",
            "1",
        ])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("limit.scope") && err.contains("nobody"), "{err}");

    // Usage and spend take --by team and --team.
    env.run(&["usage", "--by", "team"]).await.ok();
    env.run(&["spend", "--group-by", "team", "--team", "research"])
        .await
        .ok();

    let out = env.run(&["limits", "delete", "alice-rpm"]).await;
    assert!(out.ok().starts_with("removed limit alice-rpm"), "{}", out.stdout);
    let ls = env.run(&["limits", "-o", "json"]).await.json();
    assert_eq!(ls.as_array().unwrap().len(), 1);
    env.run(&["keys", "update", "alice", "--team", ""]).await.ok();
    let k = env.run(&["keys", "get", "alice", "-o", "json"]).await.json();
    assert_eq!(k["team"], "");
}
