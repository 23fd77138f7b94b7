//! Control plane Admin API over real gRPC against the real binary, on SQLite and Postgres:
//! CRUD and validation for every object, Apply, keys, auth, concurrency, encryption.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::collections::BTreeSet;

use control_common::*;
use switchyard_proto::v1 as pb;
use switchyard_tests::{store_test, TestDb};
use tonic::Code;

store_test!(providers_crud_and_validation, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let v0 = version(&mut a).await?;

    let created = a
        .create_provider(pb::CreateProviderRequest {
            provider: Some(provider("openai", "https://api.openai.com/v1")),
        })
        .await?
        .into_inner();
    // Effective defaults are filled in.
    assert_eq!(created.connect_timeout_ms, 5000);
    assert_eq!(created.request_timeout_ms, 60000);
    assert_eq!(created.idle_timeout_ms, 60000);
    assert_eq!(created.credential_strategy, "round_robin");
    assert_eq!(created.enabled, Some(true));
    let h = created.health.clone().unwrap();
    assert_eq!(
        (
            h.enabled,
            h.interval_ms,
            h.timeout_ms,
            h.probe.as_str(),
            h.healthy_below
        ),
        (Some(true), 30000, 10000, "models", 500)
    );
    assert!(created.created_at_ms > 0);
    assert_eq!(version(&mut a).await?, v0 + 1);

    let mut anth = provider("claude", "https://api.anthropic.com");
    anth.kind = "anthropic".into();
    let anth = a
        .create_provider(pb::CreateProviderRequest { provider: Some(anth) })
        .await?
        .into_inner();
    assert_eq!(anth.health.unwrap().probe, "messages:claude-3-5-haiku-latest");

    // Validation names the object and the field.
    assert_status(
        a.create_provider(pb::CreateProviderRequest {
            provider: Some(provider("bad", "ftp://x")),
        })
        .await,
        Code::InvalidArgument,
        &["provider bad", "base_url must be an absolute http(s) URL"],
    );
    assert_status(
        a.create_provider(pb::CreateProviderRequest {
            provider: Some(provider("bad", "/v1")),
        })
        .await,
        Code::InvalidArgument,
        &["base_url"],
    );
    assert_status(
        a.create_provider(pb::CreateProviderRequest {
            provider: Some(provider("Bad Name", "https://x")),
        })
        .await,
        Code::InvalidArgument,
        &["name", "[a-z0-9]"],
    );
    let mut k = provider("k", "https://x");
    k.kind = "azure".into();
    assert_status(
        a.create_provider(pb::CreateProviderRequest { provider: Some(k) })
            .await,
        Code::InvalidArgument,
        &["provider k", "kind", "azure"],
    );
    let mut cs = provider("k", "https://x");
    cs.credential_strategy = "fastest".into();
    assert_status(
        a.create_provider(pb::CreateProviderRequest { provider: Some(cs) })
            .await,
        Code::InvalidArgument,
        &["credential_strategy", "fastest"],
    );
    let mut pr = provider("k", "https://x");
    pr.health = Some(pb::HealthCheck {
        probe: "ping".into(),
        ..Default::default()
    });
    assert_status(
        a.create_provider(pb::CreateProviderRequest { provider: Some(pr) })
            .await,
        Code::InvalidArgument,
        &["health.probe"],
    );
    assert_status(
        a.create_provider(pb::CreateProviderRequest {
            provider: Some(provider("openai", "https://other/v1")),
        })
        .await,
        Code::AlreadyExists,
        &["provider openai"],
    );
    // Failed writes do not bump the version.
    assert_eq!(version(&mut a).await?, v0 + 2);

    // Get / list.
    let got = a
        .get_provider(pb::GetProviderRequest {
            name: "openai".into(),
        })
        .await?
        .into_inner();
    assert_eq!(got.base_url, "https://api.openai.com/v1");
    assert_status(
        a.get_provider(pb::GetProviderRequest { name: "nope".into() })
            .await,
        Code::NotFound,
        &["provider nope"],
    );
    let names: Vec<String> = a
        .list_providers(pb::ListProvidersRequest {})
        .await?
        .into_inner()
        .providers
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["claude", "openai"]);

    // Update with a mask changes only the listed fields.
    let mut upd = provider("openai", "https://proxy.example/v1");
    upd.health = Some(pb::HealthCheck {
        interval_ms: 5000,
        ..Default::default()
    });
    upd.description = "not in mask".into();
    let u = a
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(upd.clone()),
            update_mask: vec!["base_url".into(), "health.interval_ms".into()],
        })
        .await?
        .into_inner();
    assert_eq!(u.base_url, "https://proxy.example/v1");
    let uh = u.health.unwrap();
    assert_eq!((uh.interval_ms, uh.timeout_ms), (5000, 10000));
    assert_eq!(u.description, "");
    assert!(u.updated_at_ms >= u.created_at_ms);
    assert_status(
        a.update_provider(pb::UpdateProviderRequest {
            provider: Some(upd.clone()),
            update_mask: vec![],
        })
        .await,
        Code::InvalidArgument,
        &["update_mask"],
    );
    assert_status(
        a.update_provider(pb::UpdateProviderRequest {
            provider: Some(upd.clone()),
            update_mask: vec!["colour".into()],
        })
        .await,
        Code::InvalidArgument,
        &["colour"],
    );
    let mut bad = upd.clone();
    bad.base_url = "nonsense".into();
    assert_status(
        a.update_provider(pb::UpdateProviderRequest {
            provider: Some(bad),
            update_mask: vec!["base_url".into()],
        })
        .await,
        Code::InvalidArgument,
        &["provider openai", "base_url"],
    );
    let mut missing = upd.clone();
    missing.name = "ghost".into();
    assert_status(
        a.update_provider(pb::UpdateProviderRequest {
            provider: Some(missing),
            update_mask: vec!["base_url".into()],
        })
        .await,
        Code::NotFound,
        &["provider ghost"],
    );

    // Delete.
    let d = a
        .delete_provider(pb::DeleteProviderRequest {
            name: "claude".into(),
        })
        .await?
        .into_inner();
    assert_eq!(d.version, version(&mut a).await?);
    assert_status(
        a.delete_provider(pb::DeleteProviderRequest {
            name: "claude".into(),
        })
        .await,
        Code::NotFound,
        &["provider claude"],
    );
    Ok(())
});

store_test!(credentials_crud_redaction, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    a.create_provider(pb::CreateProviderRequest {
        provider: Some(provider("openai", "https://api.openai.com/v1")),
    })
    .await?;
    let secret = "sk-live-0123456789abcdefWXYZ";
    let c = a
        .create_credential(pb::CreateCredentialRequest {
            credential: Some(credential("openai", "key-1", secret)),
        })
        .await?
        .into_inner();
    assert_eq!(c.secret, "…WXYZ");
    assert_eq!(c.weight, Some(1));
    assert_eq!(c.enabled, Some(true));
    let short = a
        .create_credential(pb::CreateCredentialRequest {
            credential: Some(credential("openai", "key-2", "shortsecret")),
        })
        .await?
        .into_inner();
    assert_eq!(short.secret, "…");

    assert_status(
        a.create_credential(pb::CreateCredentialRequest {
            credential: Some(credential("openai", "key-3", "")),
        })
        .await,
        Code::InvalidArgument,
        &["credential openai/key-3", "secret"],
    );
    let mut w0 = credential("openai", "key-3", "sk-xxxxxxxxxxxxxxxx");
    w0.weight = Some(0);
    assert_status(
        a.create_credential(pb::CreateCredentialRequest { credential: Some(w0) })
            .await,
        Code::InvalidArgument,
        &["credential openai/key-3", "weight must be > 0"],
    );
    assert_status(
        a.create_credential(pb::CreateCredentialRequest {
            credential: Some(credential("nope", "key-3", "sk-xxxxxxxxxxxxxxxx")),
        })
        .await,
        Code::NotFound,
        &["provider nope"],
    );
    assert_status(
        a.create_credential(pb::CreateCredentialRequest {
            credential: Some(credential("openai", "key-1", "sk-xxxxxxxxxxxxxxxx")),
        })
        .await,
        Code::AlreadyExists,
        &["credential openai/key-1"],
    );

    // Lists and provider answers never carry the secret.
    let list = a
        .list_credentials(pb::ListCredentialsRequest {
            provider: "openai".into(),
        })
        .await?
        .into_inner()
        .credentials;
    assert_eq!(list.len(), 2);
    let prov = a
        .get_provider(pb::GetProviderRequest {
            name: "openai".into(),
        })
        .await?
        .into_inner();
    let all = format!("{list:?}{prov:?}");
    assert!(!all.contains(secret) && !all.contains("0123456789"), "{all}");
    let exp = a
        .export(pb::ExportRequest {
            include_secrets: false,
        })
        .await?
        .into_inner();
    assert!(!format!("{exp:?}").contains(secret));

    // Update weight (mask), then the secret.
    let mut u = credential("openai", "key-1", "");
    u.weight = Some(5);
    let out = a
        .update_credential(pb::UpdateCredentialRequest {
            credential: Some(u.clone()),
            update_mask: vec!["weight".into()],
        })
        .await?
        .into_inner();
    assert_eq!(out.weight, Some(5));
    assert_eq!(out.secret, "…WXYZ");
    u.weight = Some(0);
    assert_status(
        a.update_credential(pb::UpdateCredentialRequest {
            credential: Some(u.clone()),
            update_mask: vec!["weight".into()],
        })
        .await,
        Code::InvalidArgument,
        &["credential openai/key-1", "weight"],
    );
    u.secret = "sk-rotated-secret-ABCD".into();
    let out = a
        .update_credential(pb::UpdateCredentialRequest {
            credential: Some(u),
            update_mask: vec!["secret".into()],
        })
        .await?
        .into_inner();
    assert_eq!(out.secret, "…ABCD");
    assert_eq!(out.weight, Some(5));

    a.delete_credential(pb::DeleteCredentialRequest {
        provider: "openai".into(),
        name: "key-2".into(),
    })
    .await?;
    assert_status(
        a.delete_credential(pb::DeleteCredentialRequest {
            provider: "openai".into(),
            name: "key-2".into(),
        })
        .await,
        Code::NotFound,
        &["credential openai/key-2"],
    );
    // Deleting a provider deletes its credentials.
    a.delete_provider(pb::DeleteProviderRequest {
        name: "openai".into(),
    })
    .await?;
    let all = a
        .list_credentials(pb::ListCredentialsRequest::default())
        .await?
        .into_inner()
        .credentials;
    assert!(all.is_empty());
    Ok(())
});

store_test!(models_backends_crud, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    for n in ["openai-a", "openai-b"] {
        a.create_provider(pb::CreateProviderRequest {
            provider: Some(provider(n, "https://api.openai.com/v1")),
        })
        .await?;
    }
    let m = a
        .create_model(pb::CreateModelRequest {
            model: Some(model("gpt-4o")),
        })
        .await?
        .into_inner();
    assert_eq!(m.strategy, "round_robin");
    assert_eq!(m.retry.unwrap().max_retries, Some(2));
    assert_eq!(m.affinity.unwrap().kind, "none");
    let mut bad = model("x");
    bad.strategy = "fastest".into();
    assert_status(
        a.create_model(pb::CreateModelRequest { model: Some(bad) }).await,
        Code::InvalidArgument,
        &[
            "model x",
            "strategy \"fastest\" is not one of round_robin, random, weighted_random, weighted_round_robin, least_connections, least_latency, failover",
        ],
    );
    let mut bad = model("x");
    bad.affinity = Some(pb::Affinity {
        kind: "header".into(),
        header: String::new(),
    });
    assert_status(
        a.create_model(pb::CreateModelRequest { model: Some(bad) }).await,
        Code::InvalidArgument,
        &["model x", "affinity.header"],
    );
    assert_status(
        a.create_model(pb::CreateModelRequest {
            model: Some(model("gpt-4o")),
        })
        .await,
        Code::AlreadyExists,
        &["model gpt-4o"],
    );

    let b = a
        .create_backend(pb::CreateBackendRequest {
            backend: Some(backend("gpt-4o", "openai-a")),
        })
        .await?
        .into_inner();
    assert_eq!(b.name, "openai-a");
    assert_eq!(b.upstream_model, "gpt-4o");
    assert_eq!((b.weight, b.priority, b.enabled), (Some(1), Some(0), Some(true)));
    let mut b2 = backend("gpt-4o", "openai-b");
    b2.name = "secondary".into();
    b2.priority = Some(1);
    b2.upstream_model = "gpt-4o-2024-08-06".into();
    a.create_backend(pb::CreateBackendRequest { backend: Some(b2) })
        .await?;
    let mut w0 = backend("gpt-4o", "openai-a");
    w0.name = "zero".into();
    w0.weight = Some(0);
    assert_status(
        a.create_backend(pb::CreateBackendRequest { backend: Some(w0) })
            .await,
        Code::InvalidArgument,
        &["backend gpt-4o/zero: weight must be > 0"],
    );
    assert_status(
        a.create_backend(pb::CreateBackendRequest {
            backend: Some(backend("gpt-4o", "ghost")),
        })
        .await,
        Code::InvalidArgument,
        &["backend gpt-4o/ghost", "provider", "ghost"],
    );
    assert_status(
        a.create_backend(pb::CreateBackendRequest {
            backend: Some(backend("nomodel", "openai-a")),
        })
        .await,
        Code::NotFound,
        &["model nomodel"],
    );

    let mut u = backend("gpt-4o", "openai-a");
    u.name = "openai-a".into();
    u.weight = Some(7);
    let out = a
        .update_backend(pb::UpdateBackendRequest {
            backend: Some(u.clone()),
            update_mask: vec!["weight".into()],
        })
        .await?
        .into_inner();
    assert_eq!(out.weight, Some(7));
    u.weight = Some(0);
    assert_status(
        a.update_backend(pb::UpdateBackendRequest {
            backend: Some(u),
            update_mask: vec!["weight".into()],
        })
        .await,
        Code::InvalidArgument,
        &["backend gpt-4o/openai-a: weight must be > 0"],
    );

    let mut mu = model("gpt-4o");
    mu.strategy = "failover".into();
    let out = a
        .update_model(pb::UpdateModelRequest {
            model: Some(mu),
            update_mask: vec!["strategy".into()],
        })
        .await?
        .into_inner();
    assert_eq!(out.strategy, "failover");
    assert_eq!(out.backends.len(), 2, "updating a model keeps its backends");

    // A provider in use cannot be deleted; the error names the backends.
    assert_status(
        a.delete_provider(pb::DeleteProviderRequest {
            name: "openai-a".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["gpt-4o/openai-a"],
    );
    assert_status(
        a.delete_provider(pb::DeleteProviderRequest {
            name: "openai-b".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["gpt-4o/secondary"],
    );
    let list = a
        .list_backends(pb::ListBackendsRequest {
            model: "gpt-4o".into(),
        })
        .await?
        .into_inner()
        .backends;
    assert_eq!(list.len(), 2);
    a.delete_backend(pb::DeleteBackendRequest {
        model: "gpt-4o".into(),
        name: "secondary".into(),
    })
    .await?;
    a.delete_provider(pb::DeleteProviderRequest {
        name: "openai-b".into(),
    })
    .await?;
    // Deleting a model deletes its backends, which frees the provider.
    a.delete_model(pb::DeleteModelRequest {
        name: "gpt-4o".into(),
    })
    .await?;
    assert!(a
        .list_backends(pb::ListBackendsRequest::default())
        .await?
        .into_inner()
        .backends
        .is_empty());
    a.delete_provider(pb::DeleteProviderRequest {
        name: "openai-a".into(),
    })
    .await?;
    Ok(())
});

store_test!(api_keys, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let r = a
        .create_api_key(pb::CreateApiKeyRequest {
            name: "team-a".into(),
            allowed_models: vec!["gpt-4o".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(r.plaintext.starts_with("sk-sy-"));
    assert_eq!(r.plaintext.len(), 46);
    assert!(r.plaintext[6..].chars().all(|c| c.is_ascii_alphanumeric()));
    let k = r.key.unwrap();
    assert_eq!(k.prefix, &r.plaintext[..10]);
    assert!(k.key_hash.is_empty(), "admin answers carry no hash");
    assert_eq!(k.enabled, Some(true));

    // Import an existing token.
    let imported = "legacy-shared-bearer-token-123";
    let r2 = a
        .create_api_key(pb::CreateApiKeyRequest {
            name: "legacy".into(),
            import_plaintext: imported.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(r2.plaintext, imported);
    assert_status(
        a.create_api_key(pb::CreateApiKeyRequest {
            name: "short".into(),
            import_plaintext: "tooshort".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["key short", "import_plaintext"],
    );
    assert_status(
        a.create_api_key(pb::CreateApiKeyRequest {
            name: "team-a".into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        &["key team-a"],
    );
    assert_status(
        a.create_api_key(pb::CreateApiKeyRequest {
            name: "Team A".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["key", "name"],
    );

    // The snapshot carries the SHA-256 of the plaintext.
    let v = version(&mut a).await?;
    let mut w = Watcher::connect(&p, "w-keys", 0).await?;
    let s = w.next_at(v).await?;
    let hashes: BTreeSet<_> = s.keys.iter().map(|k| k.key_hash.clone()).collect();
    use sha2_hex::sha256_hex;
    assert!(hashes.contains(&sha256_hex(&r.plaintext)));
    assert!(hashes.contains(&sha256_hex(imported)));
    assert!(!format!("{s:?}").contains(&r.plaintext));

    // Update via mask, then revoke: disabled, marked revoked, gone from snapshots.
    let upd = a
        .update_api_key(pb::UpdateApiKeyRequest {
            key: Some(pb::ApiKey {
                name: "team-a".into(),
                description: "analytics".into(),
                ..Default::default()
            }),
            update_mask: vec!["description".into()],
        })
        .await?
        .into_inner();
    assert_eq!(upd.description, "analytics");
    let rev = a
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: "team-a".into(),
        })
        .await?
        .into_inner();
    assert!(rev.revoked);
    assert_eq!(rev.enabled, Some(false));
    let s = loop {
        let s = w.next().await?;
        if s.keys.len() == 1 {
            break s;
        }
    };
    assert_eq!(s.keys[0].name, "legacy");
    assert_status(
        a.update_api_key(pb::UpdateApiKeyRequest {
            key: Some(pb::ApiKey {
                name: "team-a".into(),
                enabled: Some(true),
                ..Default::default()
            }),
            update_mask: vec!["enabled".into()],
        })
        .await,
        Code::FailedPrecondition,
        &["key team-a", "revoked"],
    );
    let got = a
        .get_api_key(pb::GetApiKeyRequest {
            name: "team-a".into(),
        })
        .await?
        .into_inner();
    assert!(got.revoked);
    a.delete_api_key(pb::DeleteApiKeyRequest {
        name: "team-a".into(),
    })
    .await?;
    assert_status(
        a.get_api_key(pb::GetApiKeyRequest {
            name: "team-a".into(),
        })
        .await,
        Code::NotFound,
        &["key team-a"],
    );
    assert_eq!(
        a.list_api_keys(pb::ListApiKeysRequest {})
            .await?
            .into_inner()
            .keys
            .len(),
        1
    );
    Ok(())
});

mod sha2_hex {
    //! SHA-256 hex without adding a dependency to the tests crate: `sha256sum` is everywhere.
    pub fn sha256_hex(s: &str) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }
}

fn doc() -> pb::ConfigDocument {
    let mut p = provider("openai", "https://api.openai.com/v1");
    p.credentials = vec![
        credential("", "key-1", "sk-first-secret-000001"),
        credential("", "key-2", "sk-second-secret-00002"),
    ];
    let mut anth = provider("anthropic", "https://api.anthropic.com");
    anth.kind = "anthropic".into();
    anth.credentials = vec![credential("", "main", "sk-ant-secret-000000003")];
    let mut m = model("gpt-4o");
    m.backends = vec![backend("", "openai")];
    let mut c = model("claude");
    c.strategy = "failover".into();
    c.backends = vec![backend("", "anthropic")];
    pb::ConfigDocument {
        limits: Default::default(),
        providers: vec![p, anth],
        models: vec![m, c],
        keys: vec![pb::ApiKey {
            name: "ci".into(),
            ..Default::default()
        }],
    }
}

fn change_set(r: &pb::ApplyResponse) -> BTreeSet<String> {
    r.changes
        .iter()
        .map(|c| format!("{} {} {}", c.action, c.kind, c.name))
        .collect()
}

store_test!(apply_diff_atomic_idempotent, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let v0 = version(&mut a).await?;

    // Dry run: the diff, nothing written.
    let dry = a
        .apply(pb::ApplyRequest {
            document: Some(doc()),
            dry_run: true,
            prune: false,
        })
        .await?
        .into_inner();
    assert!(dry.dry_run);
    let expected: BTreeSet<String> = [
        "create provider openai",
        "create provider anthropic",
        "create credential openai/key-1",
        "create credential openai/key-2",
        "create credential anthropic/main",
        "create model gpt-4o",
        "create model claude",
        "create backend gpt-4o/openai",
        "create backend claude/anthropic",
        "create key ci",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(change_set(&dry), expected);
    assert!(dry.created_keys.is_empty());
    assert_eq!(version(&mut a).await?, v0);
    assert!(a
        .list_providers(pb::ListProvidersRequest {})
        .await?
        .into_inner()
        .providers
        .is_empty());

    // One bad object: nothing changes, version unchanged, error names it.
    let mut bad = doc();
    bad.models[1].backends[0].weight = Some(0);
    assert_status(
        a.apply(pb::ApplyRequest {
            document: Some(bad),
            dry_run: false,
            prune: false,
        })
        .await,
        Code::InvalidArgument,
        &["backend claude/anthropic: weight must be > 0"],
    );
    let mut bad = doc();
    bad.models[0].backends[0].provider = "missing".into();
    assert_status(
        a.apply(pb::ApplyRequest {
            document: Some(bad),
            dry_run: false,
            prune: false,
        })
        .await,
        Code::InvalidArgument,
        &["missing"],
    );
    assert_eq!(version(&mut a).await?, v0);
    assert!(a
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner()
        .models
        .is_empty());

    // Real apply: one version bump, key plaintext returned once.
    let r = a
        .apply(pb::ApplyRequest {
            document: Some(doc()),
            dry_run: false,
            prune: false,
        })
        .await?
        .into_inner();
    assert_eq!(change_set(&r), expected);
    assert_eq!(r.version, v0 + 1);
    assert_eq!(version(&mut a).await?, v0 + 1);
    assert_eq!(r.created_keys.len(), 1);
    assert!(r.created_keys[0].plaintext.starts_with("sk-sy-"));

    // Same document again: no changes, version unchanged.
    let again = a
        .apply(pb::ApplyRequest {
            document: Some(doc()),
            dry_run: false,
            prune: false,
        })
        .await?
        .into_inner();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(again.version, v0 + 1);
    assert!(again.created_keys.is_empty());

    // A redacted export re-applies as no changes, even with prune.
    let exported = a
        .export(pb::ExportRequest {
            include_secrets: false,
        })
        .await?
        .into_inner();
    assert_eq!(exported.version, v0 + 1);
    let re = a
        .apply(pb::ApplyRequest {
            document: exported.document.clone(),
            dry_run: false,
            prune: true,
        })
        .await?
        .into_inner();
    assert!(re.changes.is_empty(), "{:?}", re.changes);
    assert_eq!(version(&mut a).await?, v0 + 1);

    // Updates list the differing fields.
    let mut d2 = doc();
    d2.providers[0].health = Some(pb::HealthCheck {
        interval_ms: 1000,
        ..Default::default()
    });
    d2.providers[0].credentials[0].weight = Some(3);
    d2.models[0].backends[0].weight = Some(4);
    let r = a
        .apply(pb::ApplyRequest {
            document: Some(d2.clone()),
            dry_run: true,
            prune: false,
        })
        .await?
        .into_inner();
    let upd: Vec<_> = r
        .changes
        .iter()
        .map(|c| (c.action.as_str(), c.name.as_str(), c.fields.clone()))
        .collect();
    assert_eq!(
        upd,
        vec![
            ("update", "openai", vec!["health.interval_ms".to_string()]),
            ("update", "openai/key-1", vec!["weight".to_string()]),
            ("update", "gpt-4o/openai", vec!["weight".to_string()]),
        ]
    );

    // Without prune nothing is deleted; with prune the unnamed objects go.
    let mut small = doc();
    small.providers.truncate(1);
    small.providers[0].credentials.truncate(1);
    small.models.truncate(1);
    small.keys.clear();
    let r = a
        .apply(pb::ApplyRequest {
            document: Some(small.clone()),
            dry_run: true,
            prune: false,
        })
        .await?
        .into_inner();
    assert!(r.changes.is_empty(), "{:?}", r.changes);
    let r = a
        .apply(pb::ApplyRequest {
            document: Some(small),
            dry_run: false,
            prune: true,
        })
        .await?
        .into_inner();
    let expected: BTreeSet<String> = [
        "delete provider anthropic",
        "delete credential anthropic/main",
        "delete credential openai/key-2",
        "delete model claude",
        "delete backend claude/anthropic",
        "delete key ci",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(change_set(&r), expected);
    assert_eq!(version(&mut a).await?, v0 + 2);

    // A new credential without a secret is refused.
    let mut d3 = doc();
    d3.providers[0].credentials.push(credential("", "key-9", ""));
    assert_status(
        a.apply(pb::ApplyRequest {
            document: Some(d3),
            dry_run: false,
            prune: false,
        })
        .await,
        Code::InvalidArgument,
        &["credential openai/key-9", "secret"],
    );
    assert_eq!(version(&mut a).await?, v0 + 2);
    Ok(())
});

// A provider's `allow_paths`/`forward_headers` and a key's `allow_pin` over gRPC:
// normalised on create, validated with the entry named, copied by update masks, diffed by
// Apply, shown by Export without secrets, and carried by the snapshot workers receive.
store_test!(passthrough_and_pin_settings, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let v0 = version(&mut a).await?;

    let mut oa = provider("oa", "https://api.openai.com/v1");
    oa.allow_paths = vec!["/v1/files".into(), "/v1/batches".into(), "/v1/files".into()];
    oa.forward_headers = vec!["OpenAI-Project".into()];
    let created = a
        .create_provider(pb::CreateProviderRequest { provider: Some(oa) })
        .await?
        .into_inner();
    assert_eq!(created.allow_paths, ["/v1/batches", "/v1/files"]);
    assert_eq!(created.forward_headers, ["openai-project"]);

    for (paths, entry) in [
        (vec!["/v1/files", "/v1/../admin"], "allow_paths[1]"),
        (vec!["/v1/files/%2e%2e"], "allow_paths[0]"),
        (vec!["/v1/a/./b"], "allow_paths[0]"),
        (vec!["/v1/a//b"], "allow_paths[0]"),
        (vec!["/v1/a\\b"], "allow_paths[0]"),
        (vec!["/v1/a?b=1"], "allow_paths[0]"),
        (vec!["/v1/*/x"], "allow_paths[0]"),
        (vec!["/admin"], "allow_paths[0]"),
    ] {
        let mut bad = provider("bad", "https://x.example.com/v1");
        bad.allow_paths = paths.iter().map(|s| s.to_string()).collect();
        assert_status(
            a.create_provider(pb::CreateProviderRequest { provider: Some(bad) })
                .await,
            Code::InvalidArgument,
            &["provider bad", entry],
        );
    }
    let mut bad = provider("bad", "https://x.example.com/v1");
    bad.forward_headers = vec!["openai-project".into(), "x bad".into()];
    assert_status(
        a.create_provider(pb::CreateProviderRequest { provider: Some(bad) })
            .await,
        Code::InvalidArgument,
        &["provider bad", "forward_headers[1]"],
    );
    assert_eq!(version(&mut a).await?, v0 + 1, "failed writes change nothing");

    // Update masks copy only what they name.
    let mut req = provider("oa", "");
    req.allow_paths = vec!["/v1/fine_tuning/*".into()];
    let up = a
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(req.clone()),
            update_mask: vec!["allow_paths".into()],
        })
        .await?
        .into_inner();
    assert_eq!(up.allow_paths, ["/v1/fine_tuning/*"]);
    assert_eq!(up.forward_headers, ["openai-project"]);
    req.allow_paths = vec!["/v1/../x".into()];
    assert_status(
        a.update_provider(pb::UpdateProviderRequest {
            provider: Some(req),
            update_mask: vec!["allow_paths".into()],
        })
        .await,
        Code::InvalidArgument,
        &["provider oa", "allow_paths[0]"],
    );

    // Keys: off unless granted; the mask switches it.
    let k = a
        .create_api_key(pb::CreateApiKeyRequest {
            name: "ops".into(),
            allow_pin: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(k.key.unwrap().allow_pin);
    let k = a
        .create_api_key(pb::CreateApiKeyRequest {
            name: "plain".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!k.key.unwrap().allow_pin);
    let k = a
        .update_api_key(pb::UpdateApiKeyRequest {
            key: Some(pb::ApiKey {
                name: "plain".into(),
                allow_pin: true,
                ..Default::default()
            }),
            update_mask: vec!["description".into()],
        })
        .await?
        .into_inner();
    assert!(!k.allow_pin, "not in the mask");

    // Export (no secrets) shows them; Apply diffs them by field.
    let doc = a
        .export(pb::ExportRequest {
            include_secrets: false,
        })
        .await?
        .into_inner()
        .document
        .unwrap();
    let e = doc.providers.iter().find(|p| p.name == "oa").unwrap();
    assert_eq!(e.allow_paths, ["/v1/fine_tuning/*"]);
    assert_eq!(e.forward_headers, ["openai-project"]);
    assert!(doc.keys.iter().find(|k| k.name == "ops").unwrap().allow_pin);
    let mut changed = doc.clone();
    changed.providers[0].forward_headers.clear();
    for k in &mut changed.keys {
        k.allow_pin = !k.allow_pin;
    }
    let dry = a
        .apply(pb::ApplyRequest {
            document: Some(changed),
            dry_run: true,
            prune: false,
        })
        .await?
        .into_inner();
    let fields: BTreeSet<String> = dry
        .changes
        .iter()
        .map(|c| format!("{} {} {}", c.kind, c.name, c.fields.join(",")))
        .collect();
    assert_eq!(
        fields,
        [
            "key ops allow_pin",
            "key plain allow_pin",
            "provider oa forward_headers"
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );
    let same = a
        .apply(pb::ApplyRequest {
            document: Some(doc),
            dry_run: true,
            prune: false,
        })
        .await?
        .into_inner();
    assert!(same.changes.is_empty(), "{:?}", same.changes);

    // Workers receive them in the snapshot.
    let v = version(&mut a).await?;
    let mut w = Watcher::connect(&p, "w-passthrough", 0).await?;
    let s = w.next_at(v).await?;
    let sp = s.providers.iter().find(|p| p.name == "oa").unwrap();
    assert_eq!(sp.allow_paths, ["/v1/fine_tuning/*"]);
    assert_eq!(sp.forward_headers, ["openai-project"]);
    let pins: BTreeSet<(String, bool)> = s.keys.iter().map(|k| (k.name.clone(), k.allow_pin)).collect();
    assert!(pins.contains(&("ops".into(), true)) && pins.contains(&("plain".into(), false)));
    Ok(())
});

store_test!(unauthenticated, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    for token in [None, Some("wrong-token"), Some(WORKER_TOKEN)] {
        let mut a = admin_with(&p, token).await?;
        assert_status(
            a.list_providers(pb::ListProvidersRequest {}).await,
            Code::Unauthenticated,
            &[],
        );
        assert_status(
            a.create_model(pb::CreateModelRequest {
                model: Some(model("m")),
            })
            .await,
            Code::Unauthenticated,
            &[],
        );
    }
    for token in [None, Some("wrong-token"), Some(ADMIN_TOKEN)] {
        let mut w = worker_with(&p, token).await?;
        assert_status(
            w.report(pb::ReportRequest::default()).await,
            Code::Unauthenticated,
            &[],
        );
        let (mut tx, rx) = futures::channel::mpsc::channel(1);
        futures::SinkExt::send(&mut tx, hello("w", 0)).await?;
        assert_status(w.watch(rx).await.map(|_| ()), Code::Unauthenticated, &[]);
    }
    // Nothing was created by the rejected calls.
    let mut a = admin(&p).await?;
    assert!(a
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner()
        .models
        .is_empty());
    Ok(())
});

store_test!(concurrent_writes_lose_nothing, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    a.create_provider(pb::CreateProviderRequest {
        provider: Some(provider("openai", "https://api.openai.com/v1")),
    })
    .await?;
    let v0 = version(&mut a).await?;
    const N: usize = 24;
    let mut tasks = Vec::new();
    for i in 0..N {
        let mut c = admin(&p).await?;
        tasks.push(tokio::spawn(async move {
            c.create_credential(pb::CreateCredentialRequest {
                credential: Some(credential(
                    "openai",
                    &format!("key-{i}"),
                    &format!("sk-secret-value-{i:04}"),
                )),
            })
            .await
            .map(|_| ())
        }));
    }
    // Interleave field updates on the provider from another task.
    let mut c = admin(&p).await?;
    let upd = tokio::spawn(async move {
        for i in 0..5u64 {
            let mut pr = provider("openai", "https://api.openai.com/v1");
            pr.connect_timeout_ms = 1000 + i;
            c.update_provider(pb::UpdateProviderRequest {
                provider: Some(pr),
                update_mask: vec!["connect_timeout_ms".into()],
            })
            .await?;
        }
        Ok::<_, tonic::Status>(())
    });
    for t in tasks {
        t.await??;
    }
    upd.await??;
    let creds = a
        .list_credentials(pb::ListCredentialsRequest {
            provider: "openai".into(),
        })
        .await?
        .into_inner()
        .credentials;
    assert_eq!(creds.len(), N);
    let pr = a
        .get_provider(pb::GetProviderRequest {
            name: "openai".into(),
        })
        .await?
        .into_inner();
    assert_eq!(pr.connect_timeout_ms, 1004);
    assert_eq!(version(&mut a).await?, v0 + N as u64 + 5);
    Ok(())
});

store_test!(secrets_encrypted_at_rest, |db: TestDb| async move {
    let key_hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let secret = "sk-plaintext-must-not-be-stored-42";
    // A proxy password is sealed the same way, inside the provider's stored spec.
    let proxy_pw = "proxy-plaintext-must-not-be-stored-7";
    let stored_pw = |spec: &str| -> (String, i64) {
        let v: serde_json::Value = serde_json::from_str(spec).unwrap();
        let pw = &v["proxy_password"];
        (
            pw["sealed"].as_str().unwrap().to_string(),
            pw["key_version"].as_i64().unwrap(),
        )
    };
    {
        let p = spawn_control(&db, &[("SWITCHYARD_MASTER_KEY", key_hex)]).await?;
        let mut a = admin(&p).await?;
        let mut pr = provider("openai", "https://api.openai.com/v1");
        pr.proxy = "http://egress@proxy.internal:3128".into();
        pr.proxy_password = proxy_pw.into();
        a.create_provider(pb::CreateProviderRequest { provider: Some(pr) })
            .await?;
        a.create_credential(pb::CreateCredentialRequest {
            credential: Some(credential("openai", "k", secret)),
        })
        .await?;
        let st = a.get_status(pb::GetStatusRequest {}).await?.into_inner();
        assert!(st.secrets_encrypted);
        // The snapshot still carries it in clear.
        let v = version(&mut a).await?;
        let mut w = Watcher::connect(&p, "w-enc", 0).await?;
        let s = w.next_at(v).await?;
        assert_eq!(s.providers[0].credentials[0].secret, secret);
        assert_eq!(s.providers[0].proxy_password, proxy_pw);
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await?;
    let row: (String, i64) = sqlx::query_as("SELECT secret, key_version FROM credentials")
        .fetch_one(&pool)
        .await?;
    assert_eq!(row.1, 1);
    assert!(!row.0.contains("plaintext"), "secret stored in clear");
    assert_ne!(row.0, secret);
    let (spec,): (String,) = sqlx::query_as("SELECT spec FROM providers")
        .fetch_one(&pool)
        .await?;
    assert!(
        !spec.contains("plaintext"),
        "proxy password stored in clear: {spec}"
    );
    assert_eq!(stored_pw(&spec).1, 1);
    pool.close().await;

    // Rotation: a new current key, the old one listed; the secret is re-encrypted.
    let new_key = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let old = format!("1:{key_hex}");
    let p = spawn_control(
        &db,
        &[
            ("SWITCHYARD_MASTER_KEY", new_key),
            ("SWITCHYARD_MASTER_KEY_VERSION", "2"),
            ("SWITCHYARD_OLD_MASTER_KEYS", old.as_str()),
        ],
    )
    .await?;
    let mut w = Watcher::connect(&p, "w-enc2", 0).await?;
    let s = w.next().await?;
    assert_eq!(s.providers[0].credentials[0].secret, secret);
    let pool = sqlx::AnyPool::connect(&db.url).await?;
    let row: (String, i64) = sqlx::query_as("SELECT secret, key_version FROM credentials")
        .fetch_one(&pool)
        .await?;
    assert_eq!(row.1, 2);
    assert!(!row.0.contains("plaintext"));
    assert_eq!(s.providers[0].proxy_password, proxy_pw);
    let (spec,): (String,) = sqlx::query_as("SELECT spec FROM providers")
        .fetch_one(&pool)
        .await?;
    assert!(!spec.contains("plaintext"));
    assert_eq!(stored_pw(&spec).1, 2, "re-sealed with the new key: {spec}");
    pool.close().await;
    drop(p);

    // Without the key the control plane refuses to start instead of serving garbage.
    let r = spawn_control(&db, &[]).await;
    assert!(r.is_err(), "started without the master key");
    Ok(())
});

store_test!(report_is_idempotent, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut w = worker_with(&p, Some(WORKER_TOKEN)).await?;
    // Recent timestamps: records older than the retention are rolled up into hourly
    // aggregates by a background task, which would race the row count below.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let batch = pb::ReportRequest {
        worker_id: "w1".into(),
        batch_id: "b1".into(),
        usage: (0..3)
            .map(|i| pb::UsageRecord {
                id: format!("u{i}"),
                ts_ms: now_ms + i,
                model: "gpt-4o".into(),
                status: 200,
                total_tokens: 10,
                ..Default::default()
            })
            .collect(),
        health: vec![pb::HealthEvent {
            id: "h1".into(),
            ts_ms: 5,
            kind: "backend".into(),
            healthy: false,
            reason: "probe failed: 503".into(),
            ..Default::default()
        }],
    };
    let r = w.report(batch.clone()).await?.into_inner();
    assert_eq!(
        (
            r.usage_stored,
            r.usage_duplicates,
            r.health_stored,
            r.health_duplicates
        ),
        (3, 0, 1, 0)
    );
    let r = w.report(batch).await?.into_inner();
    assert_eq!(
        (
            r.usage_stored,
            r.usage_duplicates,
            r.health_stored,
            r.health_duplicates
        ),
        (0, 3, 0, 1)
    );
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await?;
    let (n,): (i64,) = sqlx::query_as("SELECT CAST(COUNT(*) AS BIGINT) FROM usage_records")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 3);
    pool.close().await;
    Ok(())
});
