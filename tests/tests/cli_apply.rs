//! `switchyard apply` / `export` against a real control plane: the shipped example file,
//! round trips, dry runs, pruning, secrets in files, and error reporting.
#![allow(clippy::unwrap_used)]

#[path = "cli_support/mod.rs"]
mod support;

use support::*;

fn envs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect()
}

#[tokio::test]
async fn example_file_applies_round_trips_and_never_leaks_secrets() {
    let env = Env::start().await.unwrap();
    let secrets = example_env();
    for (_, s) in &secrets {
        env.secret(s);
    }
    let vars = envs(&secrets);
    let example = example_path();
    let example = example.to_str().unwrap();

    // Dry run: prints the diff, changes nothing.
    let before = env.run(&["export"]).await.ok().to_string();
    let out = env
        .run_with(&["apply", "-f", example, "--dry-run"], &vars, None)
        .await;
    let diff = out.ok().to_string();
    assert!(diff.contains("+ provider jetbrains\n"), "{diff}");
    assert!(diff.contains("+ credential jetbrains/jwt-3\n"), "{diff}");
    assert!(
        diff.contains("+ backend claude-sonnet-4-5/claude-relay\n"),
        "{diff}"
    );
    assert!(diff.contains("+ key team-a\n"), "{diff}");
    assert!(diff.contains("+ limit team-a-monthly\n"), "{diff}");
    assert!(diff.contains("(dry run, nothing changed)"), "{diff}");
    assert!(!diff.contains("sk-sy-"), "a dry run creates no key: {diff}");
    assert_eq!(env.run(&["export"]).await.ok(), before);

    // Real apply: same diff, and each new key's plaintext once.
    let out = env.run_with(&["apply", "-f", example], &vars, None).await;
    let applied = out.ok().to_string();
    assert!(applied.contains("changes applied (config version"), "{applied}");
    let keys: Vec<&str> = applied.lines().filter(|l| l.starts_with("key ")).collect();
    assert_eq!(keys.len(), 2, "{applied}");
    assert!(keys.iter().all(|l| l.contains(": sk-sy-")), "{applied}");
    for l in &keys {
        env.secret(l.rsplit(' ').next().unwrap());
    }
    assert!(out.stderr.contains("shown only once"), "{}", out.stderr);

    // The routing that the example describes is what the control plane now has.
    let m = env
        .run(&["models", "get", "berry-smart", "-o", "json"])
        .await
        .json();
    assert_eq!(m["strategy"], "weighted_random");
    let weights: Vec<u64> = m["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    let mut sorted = weights.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 3, 6]);
    let p = env
        .run(&["providers", "get", "jetbrains", "-o", "json"])
        .await
        .json();
    assert_eq!(p["auth_header"], "grazie-authenticate-jwt");
    assert_eq!(p["credentials"].as_array().map(|c| c.len()).unwrap_or(0), 3);
    let creds = env
        .run(&["credentials", "list", "jetbrains", "-o", "json"])
        .await
        .json();
    let jwt1 = &creds.as_array().unwrap()[0];
    let jwt1_secret = &secrets.iter().find(|(k, _)| k == "JB_JWT_1").unwrap().1;
    let shown = jwt1["secret_redacted"].as_str().unwrap().trim_start_matches('…');
    assert!(!shown.is_empty() && jwt1_secret.ends_with(shown), "{shown}");
    let m = env
        .run(&["models", "get", "llama-3.3-70b", "-o", "json"])
        .await
        .json();
    assert_eq!(m["strategy"], "least_connections");
    assert_eq!(m["affinity"], "header:x-session-id");
    assert_eq!(m["max_retries"], 3);
    // Limits: the spend amount in currency units became nano-units; teams are on keys.
    let ls = env.run(&["limits", "-o", "json"]).await.json();
    let budget = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "team-a-monthly")
        .unwrap();
    assert_eq!(budget["amount"], 200_000_000_000u64);
    assert_eq!(
        (budget["kind"].as_str(), budget["window"].as_str()),
        (Some("spend"), Some("month"))
    );
    let table = env.run(&["limits"]).await.ok().to_string();
    assert!(table.contains("200.000000"), "money shown like spend: {table}");
    let k = env.run(&["keys", "get", "team-a", "-o", "json"]).await.json();
    assert_eq!(k["team"], "team-a");

    // Applying the same file again changes nothing.
    let out = env.run_with(&["apply", "-f", example], &vars, None).await;
    assert_eq!(out.ok(), "no changes\n");

    // Export, then apply the export (without any secret env): no changes.
    let exported = env.run(&["export"]).await.ok().to_string();
    assert!(
        !exported.lines().any(|l| l.trim_start().starts_with("secret")),
        "redacted export carries no secret fields:\n{exported}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exported.toml");
    std::fs::write(&file, &exported).unwrap();
    let out = env.run(&["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(out.ok(), "no changes\n");
    let out = env.run(&["apply", "-f", file.to_str().unwrap(), "--prune"]).await;
    assert_eq!(out.ok(), "no changes\n", "the export names everything");
    assert_eq!(env.run(&["export"]).await.ok(), exported);

    // Export with secrets also re-applies as no changes, and does contain them.
    let out = env
        .run_unchecked(&["export", "--include-secrets"], &[], None)
        .await;
    let with_secrets = out.ok().to_string();
    assert!(with_secrets.contains(jwt1_secret.as_str()));
    let out = env
        .run_unchecked(&["apply", "-f", "-"], &[], Some(&with_secrets))
        .await;
    assert_eq!(out.ok(), "no changes\n");

    // JSON output of apply and export.
    let j = env
        .run_with(&["apply", "-f", example, "-o", "json"], &vars, None)
        .await
        .json();
    assert_eq!(j["changes"].as_array().unwrap().len(), 0);
    assert_eq!(j["dry_run"], false);
    let j = env.run(&["export", "-o", "json"]).await.json();
    assert_eq!(j["providers"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn updates_show_fields_and_prune_deletes() {
    let env = Env::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = env.secret("sk-file-secret-3c5e7a9b1d3f5a7c9e1b");
    std::fs::write(dir.path().join("openai.key"), format!("{key}\n")).unwrap();
    let v1 = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
[[providers.credentials]]
name = "k1"
secret_file = "openai.key"

[[providers]]
name = "old"
kind = "openai"
base_url = "https://old.example.com/v1"
[[providers.credentials]]
name = "k1"
secret_file = "openai.key"

[[models]]
name = "gpt-4o"
[[models.backends]]
provider = "openai"
[[models.backends]]
provider = "old"
"#;
    let f1 = dir.path().join("v1.toml");
    std::fs::write(&f1, v1).unwrap();
    env.run(&["apply", "-f", f1.to_str().unwrap()]).await.ok();
    let creds = env
        .run(&["credentials", "list", "openai", "-o", "json"])
        .await
        .json();
    assert!(creds[0]["secret_redacted"].as_str().unwrap().ends_with("9e1b"));

    let v2 = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
timeout = "2m"
[[providers.credentials]]
name = "k1"

[[models]]
name = "gpt-4o"
strategy = "least_latency"
max_retries = 4
[[models.backends]]
provider = "openai"
weight = 2
"#;
    let f2 = dir.path().join("v2.toml");
    std::fs::write(&f2, v2).unwrap();
    let before = env.run(&["export"]).await.ok().to_string();
    let diff = env
        .run(&["apply", "-f", f2.to_str().unwrap(), "--prune", "--dry-run"])
        .await
        .ok()
        .to_string();
    assert!(
        diff.contains("~ provider openai (request_timeout_ms)\n"),
        "{diff}"
    );
    assert!(
        diff.contains("~ model gpt-4o (retry.max_retries, strategy)\n"),
        "{diff}"
    );
    assert!(diff.contains("~ backend gpt-4o/openai (weight)\n"), "{diff}");
    assert!(diff.contains("- backend gpt-4o/old\n"), "{diff}");
    assert!(diff.contains("- provider old\n"), "{diff}");
    assert_eq!(
        env.run(&["export"]).await.ok(),
        before,
        "dry run changed something"
    );

    // Without --prune nothing is deleted.
    let diff = env
        .run(&["apply", "-f", f2.to_str().unwrap()])
        .await
        .ok()
        .to_string();
    assert!(!diff.contains("- "), "{diff}");
    let diff = env
        .run(&["apply", "-f", f2.to_str().unwrap(), "--prune"])
        .await
        .ok()
        .to_string();
    assert!(
        diff.contains("- provider old\n") && diff.contains("applied"),
        "{diff}"
    );
    let ps = env.run(&["providers", "list", "-o", "json"]).await.json();
    assert_eq!(ps.as_array().unwrap().len(), 1);
    // The credential kept its stored secret (the file gave none).
    let creds = env
        .run(&["credentials", "list", "openai", "-o", "json"])
        .await
        .json();
    assert!(creds[0]["secret_redacted"].as_str().unwrap().ends_with("9e1b"));
    assert_eq!(
        env.run(&["apply", "-f", f2.to_str().unwrap(), "--prune"])
            .await
            .ok(),
        "no changes\n"
    );
}

#[tokio::test]
async fn apply_errors_name_the_file_field_and_change_nothing() {
    let env = Env::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = write(
        "good.toml",
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"https://p.example.com/v1\"\n",
    );
    env.run(&["apply", "-f", &good]).await.ok();
    let before = env.run(&["export"]).await.ok().to_string();

    // Unknown field: the message names the file and the key.
    let f = write("typo.toml", "[[models]]\nname = \"m\"\nstrategyy = \"random\"\n");
    let err = env.run(&["apply", "-f", &f]).await.fails(1).to_string();
    assert!(err.starts_with(&format!("error: {f}: ")), "{err}");
    assert!(err.contains("strategyy"), "{err}");

    // Unset secret env: names the credential and the variable.
    let f = write(
        "env.toml",
        "[[providers]]\nname = \"q\"\nkind = \"openai\"\nbase_url = \"https://q.example.com/v1\"\n\
         [[providers.credentials]]\nname = \"k1\"\nsecret_env = \"SURELY_UNSET_SECRET_42\"\n",
    );
    let err = env.run(&["apply", "-f", &f]).await.fails(1).to_string();
    assert!(
        err.contains("providers.q.credentials.k1") && err.contains("SURELY_UNSET_SECRET_42"),
        "{err}"
    );

    // Bad duration: names the path.
    let f = write(
        "dur.toml",
        "[[providers]]\nname = \"q\"\nkind = \"openai\"\nbase_url = \"https://q.example.com/v1\"\ntimeout = \"forever\"\n",
    );
    let err = env.run(&["apply", "-f", &f]).await.fails(1).to_string();
    assert!(err.contains("providers.q.timeout"), "{err}");

    // Server-side validation: one line, exit 1, and the whole document is rejected.
    let f = write(
        "weight.toml",
        "[[providers]]\nname = \"q\"\nkind = \"openai\"\nbase_url = \"https://q.example.com/v1\"\n\
         [[models]]\nname = \"m\"\n[[models.backends]]\nprovider = \"q\"\nname = \"zero\"\nweight = 0\n",
    );
    let err = env.run(&["apply", "-f", &f]).await.fails(1).to_string();
    assert_eq!(err, "error: backend m/zero: weight must be > 0\n");
    // A credential without a secret cannot be created.
    let f = write(
        "nosecret.toml",
        "[[providers]]\nname = \"q\"\nkind = \"openai\"\nbase_url = \"https://q.example.com/v1\"\n\
         [[providers.credentials]]\nname = \"k1\"\n",
    );
    let err = env.run(&["apply", "-f", &f]).await.fails(1).to_string();
    assert!(err.contains("q/k1") && err.contains("secret"), "{err}");
    // A relative key expiry is refused (it would change on every apply).
    let f = write("key.toml", "[[keys]]\nname = \"a\"\nexpires = \"30d\"\n");
    let err = env.run(&["apply", "-f", &f]).await.fails(1).to_string();
    assert!(err.contains("keys.a.expires"), "{err}");
    let err = env
        .run(&["apply", "-f", "/nonexistent/switchyard.toml"])
        .await
        .fails(1)
        .to_string();
    assert!(err.contains("/nonexistent/switchyard.toml"), "{err}");
    env.run(&["apply"]).await.fails(2);
    let err = env
        .run_with(&["apply", "-f", "-", "--prune"], &[], Some(""))
        .await
        .fails(2)
        .to_string();
    assert!(err.contains("refusing to --prune"), "{err}");

    assert_eq!(
        env.run(&["export"]).await.ok(),
        before,
        "a failed apply changed something"
    );
}

#[tokio::test]
async fn apply_reads_stdin_and_accepts_toml_datetimes() {
    let env = Env::start().await.unwrap();
    let secret = env.secret("sk-stdin-doc-secret-8d0f2b4d6f8a0c2e");
    let doc = format!(
        "[[providers]]\nname = \"p\"\nkind = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\n\
         [[providers.credentials]]\nname = \"k\"\nsecret = \"{secret}\"\n\
         [[models]]\nname = \"claude\"\n[[models.backends]]\nprovider = \"p\"\n\
         [[keys]]\nname = \"ci\"\nmodels = [\"claude\"]\nexpires = 2030-01-01T00:00:00Z\n"
    );
    let out = env.run_with(&["apply", "-f", "-"], &[], Some(&doc)).await;
    let text = out.ok().to_string();
    assert!(
        text.contains("+ provider p\n") && text.contains("+ key ci\n"),
        "{text}"
    );
    for l in text.lines().filter(|l| l.starts_with("key ci: ")) {
        env.secret(l.trim_start_matches("key ci: "));
    }
    let k = env.run(&["keys", "get", "ci", "-o", "json"]).await.json();
    assert_eq!(k["expires_at_ms"], 1_893_456_000_000i64);
    let exported = env.run(&["export"]).await.ok().to_string();
    assert!(
        exported.contains("expires = \"2030-01-01T00:00:00Z\""),
        "{exported}"
    );
    let out = env.run_with(&["apply", "-f", "-"], &[], Some(&exported)).await;
    assert_eq!(out.ok(), "no changes\n");
}

/// `allow_paths`, `forward_headers` and a key's `allow_pin` in the declarative file: applied,
/// exported (redacted export included), re-applied as no change, diffed by field, and a
/// bad path refused with its index and nothing changed.
#[tokio::test]
async fn passthrough_and_pin_settings_round_trip() {
    let env = Env::start().await.unwrap();
    let v1 = r#"
[[providers]]
name = "oa"
kind = "openai"
base_url = "https://api.openai.com/v1"
allow_paths = ["/v1/files", "/v1/fine_tuning/*"]
forward_headers = ["OpenAI-Organization", "openai-project"]

[[keys]]
name = "ops"
allow_pin = true

[[keys]]
name = "plain"
"#;
    let out = env.run_with(&["apply", "-f", "-"], &[], Some(v1)).await;
    let text = out.ok().to_string();
    for l in text.lines().filter(|l| l.starts_with("key ")) {
        env.secret(l.rsplit(' ').next().unwrap());
    }
    let p = env.run(&["providers", "get", "oa", "-o", "json"]).await.json();
    assert_eq!(
        p["allow_paths"],
        serde_json::json!(["/v1/files", "/v1/fine_tuning/*"])
    );
    assert_eq!(
        p["forward_headers"],
        serde_json::json!(["openai-organization", "openai-project"])
    );
    let k = env.run(&["keys", "get", "ops", "-o", "json"]).await.json();
    assert_eq!(k["allow_pin"], true);
    let k = env.run(&["keys", "get", "plain", "-o", "json"]).await.json();
    assert_eq!(k["allow_pin"], false);

    // The redacted export shows all three, omits the defaults, and re-applies as no change.
    let exported = env.run(&["export"]).await.ok().to_string();
    assert!(
        exported.contains(r#"allow_paths = ["/v1/files", "/v1/fine_tuning/*"]"#),
        "{exported}"
    );
    assert!(
        exported.contains(r#"forward_headers = ["openai-organization", "openai-project"]"#),
        "{exported}"
    );
    assert_eq!(exported.matches("allow_pin = true").count(), 1, "{exported}");
    assert!(!exported.contains("allow_pin = false"), "{exported}");
    let out = env.run_with(&["apply", "-f", "-"], &[], Some(&exported)).await;
    assert_eq!(out.ok(), "no changes\n");

    // A change shows the field that differs.
    let v2 = v1
        .replace(r#"["/v1/files", "/v1/fine_tuning/*"]"#, r#"["/v1/files"]"#)
        .replace("allow_pin = true", "allow_pin = false");
    let diff = env
        .run_with(&["apply", "-f", "-", "--dry-run"], &[], Some(&v2))
        .await
        .ok()
        .to_string();
    assert!(diff.contains("~ provider oa (allow_paths)\n"), "{diff}");
    assert!(diff.contains("~ key ops (allow_pin)\n"), "{diff}");
    let v3 = v1.replace(
        "forward_headers = [\"OpenAI-Organization\", \"openai-project\"]",
        "",
    );
    let diff = env
        .run_with(&["apply", "-f", "-", "--dry-run"], &[], Some(&v3))
        .await
        .ok()
        .to_string();
    assert!(diff.contains("~ provider oa (forward_headers)\n"), "{diff}");

    // A dot-segment path: the error names the provider and the entry; nothing changes.
    let before = env.run(&["export"]).await.ok().to_string();
    let bad = v1.replace(r#""/v1/fine_tuning/*""#, r#""/v1/../../admin""#);
    let err = env
        .run_with(&["apply", "-f", "-"], &[], Some(&bad))
        .await
        .fails(1)
        .to_string();
    assert!(
        err.contains("provider oa: allow_paths[1]") && err.contains("`..`"),
        "{err}"
    );
    assert_eq!(env.run(&["export"]).await.ok(), before);
}
