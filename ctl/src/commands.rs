//! One function per command: build the request, call the Admin API, print the answer.
//!
//! Human output goes to stdout (tables, diffs), notes and warnings go to stderr, so that
//! `-o json` stdout is always a single JSON document.

use std::{collections::HashMap, io::Read, path::Path, time::SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;
use switchyard_proto as pb;

use crate::{
    cli::*,
    client::Admin,
    doc::{self, system_time_ms, FileDoc, SecretEnv},
    out, price, secret, table,
    view::*,
    UsageError,
};

/// Printing context shared by all commands.
pub struct Ctx {
    pub output: Output,
}

impl Ctx {
    fn json<T: Serialize>(&self, v: &T) -> Result<()> {
        let mut text = serde_json::to_string_pretty(v).context("render JSON")?;
        text.push('\n');
        out(&text)
    }

    /// Print `v` as JSON, or `text()` for tables.
    pub(crate) fn show<T: Serialize>(&self, v: &T, text: impl FnOnce() -> String) -> Result<()> {
        match self.output {
            Output::Json => self.json(v),
            Output::Table => out(&text()),
        }
    }
}

fn getenv(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

fn to_map(kv: &[(String, String)]) -> HashMap<String, String> {
    kv.iter().cloned().collect()
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

fn nothing_to_update(what: &str) -> anyhow::Error {
    UsageError(format!(
        "nothing to update: give at least one field flag (see `switchyard {what} update --help`)"
    ))
    .into()
}

// ---------------------------------------------------------------------------
// providers
// ---------------------------------------------------------------------------

/// Copy the flags the user gave into `p`, recording each one's mask path.
fn provider_fields(p: &mut pb::Provider, c: &ProviderCommon, mask: &mut Vec<String>) -> Result<()> {
    let mut set = |path: &str| mask.push(path.to_string());
    if let Some(x) = &c.proxy {
        p.proxy = x.clone();
        set("proxy");
    }
    if let Some(var) = &c.proxy_password_env {
        p.proxy_password = std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .with_context(|| format!("environment variable {var} (--proxy-password-env) is not set"))?;
        set("proxy_password");
    }
    if let Some(path) = &c.proxy_password_file {
        p.proxy_password = crate::secret::read_secret_file(path).context("--proxy-password-file")?;
        set("proxy_password");
    }
    for (v, field, out) in [
        (&c.ca_file, "ca_file", &mut p.ca_file),
        (&c.client_cert_file, "client_cert_file", &mut p.client_cert_file),
        (&c.client_key_file, "client_key_file", &mut p.client_key_file),
    ] {
        if let Some(v) = v {
            *out = v.clone();
            set(field);
        }
    }
    if let Some(d) = c.timeout {
        p.request_timeout_ms = ms(d);
        set("request_timeout_ms");
    }
    if let Some(d) = c.connect_timeout {
        p.connect_timeout_ms = ms(d);
        set("connect_timeout_ms");
    }
    if let Some(d) = c.idle_timeout {
        p.idle_timeout_ms = ms(d);
        set("idle_timeout_ms");
    }
    if let Some(d) = c.total_timeout {
        p.total_timeout_ms = ms(d);
        set("total_timeout_ms");
    }
    if let Some(s) = &c.credential_strategy {
        p.credential_strategy = s.clone();
        set("credential_strategy");
    }
    if c.auth_header.is_some() || c.auth_prefix.is_some() {
        let auth = p.auth.get_or_insert_with(Default::default);
        if let Some(h) = &c.auth_header {
            auth.header = h.clone();
            set("auth.header");
        }
        if let Some(pre) = &c.auth_prefix {
            auth.prefix = pre.clone();
            set("auth.prefix");
        }
    }
    if !c.headers.is_empty() {
        p.headers = to_map(&c.headers);
        set("headers");
    }
    if !c.metadata.is_empty() {
        p.metadata = to_map(&c.metadata);
        set("metadata");
    }
    if !c.allow_paths.is_empty() {
        p.allow_paths = non_empty_values(&c.allow_paths);
        set("allow_paths");
    }
    if !c.forward_headers.is_empty() {
        p.forward_headers = non_empty_values(&c.forward_headers);
        set("forward_headers");
    }
    if let Some(d) = &c.description {
        p.description = d.clone();
        set("description");
    }
    let health_given = c.health_enabled().is_some()
        || c.health_probe.is_some()
        || c.health_interval.is_some()
        || c.health_timeout.is_some()
        || c.healthy_below.is_some();
    if health_given {
        let h = p.health.get_or_insert_with(Default::default);
        if let Some(e) = c.health_enabled() {
            h.enabled = Some(e);
            set("health.enabled");
        }
        if let Some(probe) = &c.health_probe {
            h.probe = probe.clone();
            set("health.probe");
        }
        if let Some(d) = c.health_interval {
            h.interval_ms = ms(d);
            set("health.interval_ms");
        }
        if let Some(d) = c.health_timeout {
            h.timeout_ms = ms(d);
            set("health.timeout_ms");
        }
        if let Some(b) = c.healthy_below {
            h.healthy_below = b;
            set("health.healthy_below");
        }
    }
    Ok(())
}

/// A repeatable flag's values without the empty ones (`--flag ''` clears the list).
fn non_empty_values(v: &[String]) -> Vec<String> {
    v.iter().filter(|s| !s.is_empty()).cloned().collect()
}

fn list_cell(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(", ")
    }
}

fn provider_detail(v: &ProviderView) -> String {
    let h = &v.health;
    let health = if h.enabled {
        format!(
            "every {}, timeout {}, probe {}, healthy below {}",
            dur_cell(h.interval_ms),
            dur_cell(h.timeout_ms),
            or_dash(&h.probe),
            h.healthy_below
        )
    } else {
        "off".to_string()
    };
    let auth = if v.auth_header.is_empty() && v.auth_prefix.is_empty() {
        "kind default".to_string()
    } else {
        format!("{}: {}<secret>", or_dash(&v.auth_header), v.auth_prefix)
    };
    let mut rows = vec![
        ("name", v.name.clone()),
        ("kind", v.kind.clone()),
        ("base_url", v.base_url.clone()),
        ("enabled", yes_no(v.enabled)),
        ("description", or_dash(&v.description)),
        ("credential_strategy", or_dash(&v.credential_strategy)),
        (
            "timeouts",
            format!(
                "connect {}, request {}, idle {}, total {}",
                dur_cell(v.connect_timeout_ms),
                dur_cell(v.request_timeout_ms),
                dur_cell(v.idle_timeout_ms),
                dur_cell(v.total_timeout_ms)
            ),
        ),
        ("auth", auth),
        ("headers", map_cell(&v.headers)),
        ("allow_paths", list_cell(&v.allow_paths)),
        ("forward_headers", list_cell(&v.forward_headers)),
    ];
    // Egress rows only when set: most providers are reached directly.
    if !v.proxy.is_empty() {
        let pw = if v.proxy_password.is_empty() {
            String::new()
        } else {
            format!(" (password {})", v.proxy_password)
        };
        rows.push(("proxy", format!("{}{pw}", v.proxy)));
    }
    for (k, f) in [
        ("ca_file", &v.ca_file),
        ("client_cert_file", &v.client_cert_file),
        ("client_key_file", &v.client_key_file),
    ] {
        if !f.is_empty() {
            rows.push((k, f.clone()));
        }
    }
    rows.extend([
        ("health", health),
        ("metadata", map_cell(&v.metadata)),
        ("created", time_cell(v.created_at_ms)),
        ("updated", time_cell(v.updated_at_ms)),
    ]);
    let mut out = table::render_kv(&rows);
    out.push('\n');
    out.push_str(&credentials_table(&v.credentials));
    out
}

fn credentials_table(creds: &[CredentialView]) -> String {
    let rows: Vec<Vec<String>> = creds
        .iter()
        .map(|c| {
            vec![
                c.provider.clone(),
                c.name.clone(),
                or_dash(&c.secret_redacted),
                c.weight.to_string(),
                c.state
                    .clone()
                    .unwrap_or_else(|| credential_state(c.enabled, 0, 0)),
                or_dash(&c.description),
            ]
        })
        .collect();
    table::render(
        &["PROVIDER", "NAME", "SECRET", "WEIGHT", "STATE", "DESCRIPTION"],
        &rows,
    )
}

pub async fn providers(ctx: &Ctx, admin: &mut Admin, cmd: ProvidersCmd) -> Result<()> {
    match cmd {
        ProvidersCmd::Add(a) => {
            let mut p = pb::Provider {
                name: a.name,
                kind: a.kind,
                base_url: a.base_url,
                enabled: a.disabled.then_some(false),
                ..Default::default()
            };
            provider_fields(&mut p, &a.common, &mut Vec::new())?;
            let req = pb::CreateProviderRequest { provider: Some(p) };
            let p = admin
                .client
                .create_provider(req)
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = ProviderView::from(&p);
            ctx.show(&v, || format!("created provider {}\n", v.name))
        }
        ProvidersCmd::List => {
            let ps = admin
                .client
                .list_providers(pb::ListProvidersRequest {})
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .providers;
            // List answers may leave credentials out; fetch them once to count.
            let creds = admin
                .client
                .list_credentials(pb::ListCredentialsRequest::default())
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .credentials;
            let mut views: Vec<ProviderView> = ps.iter().map(ProviderView::from).collect();
            for v in &mut views {
                if v.credentials.is_empty() {
                    v.credentials = creds
                        .iter()
                        .filter(|c| c.provider == v.name)
                        .map(CredentialView::from)
                        .collect();
                }
            }
            views.sort_by(|a, b| a.name.cmp(&b.name));
            ctx.show(&views, || {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        let enabled = v.credentials.iter().filter(|c| c.enabled).count();
                        vec![
                            v.name.clone(),
                            v.kind.clone(),
                            v.base_url.clone(),
                            format!("{enabled}/{}", v.credentials.len()),
                            or_dash(&v.credential_strategy),
                            if v.health.enabled {
                                or_dash(&v.health.probe)
                            } else {
                                "off".into()
                            },
                            yes_no(v.enabled),
                        ]
                    })
                    .collect();
                table::render(
                    &[
                        "NAME",
                        "KIND",
                        "BASE_URL",
                        "CREDENTIALS",
                        "STRATEGY",
                        "HEALTH",
                        "ENABLED",
                    ],
                    &rows,
                )
            })
        }
        ProvidersCmd::Get { name } => {
            let p = admin
                .client
                .get_provider(pb::GetProviderRequest { name })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = ProviderView::from(&p);
            ctx.show(&v, || provider_detail(&v))
        }
        ProvidersCmd::Update(u) => {
            let mut p = pb::Provider {
                name: u.name,
                ..Default::default()
            };
            let mut mask = Vec::new();
            if let Some(k) = u.kind {
                p.kind = k;
                mask.push("kind".to_string());
            }
            if let Some(b) = u.base_url {
                p.base_url = b;
                mask.push("base_url".to_string());
            }
            if u.enable || u.disable {
                p.enabled = Some(u.enable);
                mask.push("enabled".to_string());
            }
            provider_fields(&mut p, &u.common, &mut mask)?;
            if mask.is_empty() {
                return Err(nothing_to_update("providers"));
            }
            let req = pb::UpdateProviderRequest {
                provider: Some(p),
                update_mask: mask.clone(),
            };
            let p = admin
                .client
                .update_provider(req)
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = ProviderView::from(&p);
            ctx.show(&v, || {
                format!("updated provider {} ({})\n", v.name, mask.join(", "))
            })
        }
        ProvidersCmd::Remove { name } => {
            let r = admin
                .client
                .delete_provider(pb::DeleteProviderRequest { name: name.clone() })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            deleted(ctx, "provider", name, r.version)
        }
    }
}

pub(crate) fn deleted(ctx: &Ctx, kind: &'static str, name: String, version: u64) -> Result<()> {
    let v = DeletedView { kind, name, version };
    ctx.show(&v, || {
        format!("removed {} {} (config version {})\n", v.kind, v.name, v.version)
    })
}

// ---------------------------------------------------------------------------
// credentials
// ---------------------------------------------------------------------------

fn resolve_secret(src: &SecretSource) -> Result<Option<String>> {
    let mut stdin = std::io::stdin().lock();
    secret::resolve(src, &getenv, &mut stdin, &mut |w| eprintln!("{w}"))
}

/// The first `key-N` not taken yet.
fn next_credential_name(existing: &[pb::Credential]) -> String {
    (1..)
        .map(|n| format!("key-{n}"))
        .find(|n| !existing.iter().any(|c| &c.name == n))
        .unwrap_or_else(|| "key".to_string())
}

pub async fn credentials(ctx: &Ctx, admin: &mut Admin, cmd: CredentialsCmd) -> Result<()> {
    match cmd {
        CredentialsCmd::Add(a) => {
            // Read the secret before any network call, so stdin is consumed even on errors.
            let Some(secret) = resolve_secret(&a.secret)? else {
                return Err(UsageError(
                    "a secret is required: --secret-env VAR, --secret-file PATH or --secret - (stdin)".into(),
                )
                .into());
            };
            let name = match a.name {
                Some(n) => n,
                None => {
                    let existing = admin
                        .client
                        .list_credentials(pb::ListCredentialsRequest {
                            provider: a.provider.clone(),
                        })
                        .await
                        .map_err(|s| admin.status(s))?
                        .into_inner()
                        .credentials;
                    next_credential_name(&existing)
                }
            };
            let c = pb::Credential {
                provider: a.provider,
                name,
                secret,
                weight: a.weight,
                enabled: a.disabled.then_some(false),
                metadata: to_map(&a.metadata),
                description: a.description.unwrap_or_default(),
                ..Default::default()
            };
            let req = pb::CreateCredentialRequest { credential: Some(c) };
            let c = admin
                .client
                .create_credential(req)
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = CredentialView::from(&c);
            ctx.show(&v, || format!("created credential {}/{}\n", v.provider, v.name))
        }
        CredentialsCmd::List { provider } => {
            let mut creds = admin
                .client
                .list_credentials(pb::ListCredentialsRequest {
                    provider: provider.unwrap_or_default(),
                })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .credentials;
            creds.sort_by(|a, b| (&a.provider, &a.name).cmp(&(&b.provider, &b.name)));
            // What the fleet reports about each credential (control's GetHealth).
            let health = admin
                .client
                .get_health(pb::GetHealthRequest::default())
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .targets;
            let views: Vec<CredentialView> = creds
                .iter()
                .map(|c| {
                    let mut v = CredentialView::from(c);
                    let (ok, total) = health
                        .iter()
                        .find(|t| {
                            t.kind == "credential" && t.provider == v.provider && t.credential == v.name
                        })
                        .map_or((0, 0), |t| (t.healthy_workers, t.total_workers));
                    v.state = Some(credential_state(v.enabled, ok, total));
                    v
                })
                .collect();
            ctx.show(&views, || credentials_table(&views))
        }
        CredentialsCmd::Update(u) => {
            let mut c = pb::Credential {
                provider: u.provider,
                name: u.name,
                ..Default::default()
            };
            let mut mask = Vec::new();
            if let Some(s) = resolve_secret(&u.secret)? {
                c.secret = s;
                mask.push("secret".to_string());
            }
            if let Some(w) = u.weight {
                c.weight = Some(w);
                mask.push("weight".to_string());
            }
            if let Some(d) = u.description {
                c.description = d;
                mask.push("description".to_string());
            }
            if !u.metadata.is_empty() {
                c.metadata = to_map(&u.metadata);
                mask.push("metadata".to_string());
            }
            if mask.is_empty() {
                return Err(nothing_to_update("credentials"));
            }
            update_credential(ctx, admin, c, mask).await
        }
        CredentialsCmd::Enable { provider, name } => {
            set_credential_enabled(ctx, admin, provider, name, true).await
        }
        CredentialsCmd::Disable { provider, name } => {
            set_credential_enabled(ctx, admin, provider, name, false).await
        }
        CredentialsCmd::Remove { provider, name } => {
            let r = admin
                .client
                .delete_credential(pb::DeleteCredentialRequest {
                    provider: provider.clone(),
                    name: name.clone(),
                })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            deleted(ctx, "credential", format!("{provider}/{name}"), r.version)
        }
    }
}

async fn set_credential_enabled(
    ctx: &Ctx,
    admin: &mut Admin,
    provider: String,
    name: String,
    on: bool,
) -> Result<()> {
    let c = pb::Credential {
        provider,
        name,
        enabled: Some(on),
        ..Default::default()
    };
    // The note names the state it is now in, not the field that changed.
    let state = if on { "enabled" } else { "disabled" };
    let req = pb::UpdateCredentialRequest {
        credential: Some(c),
        update_mask: vec!["enabled".to_string()],
    };
    let c = admin
        .client
        .update_credential(req)
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let v = CredentialView::from(&c);
    ctx.show(&v, || {
        format!("updated credential {}/{} ({state})\n", v.provider, v.name)
    })
}

async fn update_credential(ctx: &Ctx, admin: &mut Admin, c: pb::Credential, mask: Vec<String>) -> Result<()> {
    let req = pb::UpdateCredentialRequest {
        credential: Some(c),
        update_mask: mask.clone(),
    };
    let c = admin
        .client
        .update_credential(req)
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let v = CredentialView::from(&c);
    ctx.show(&v, || {
        format!(
            "updated credential {}/{} ({})\n",
            v.provider,
            v.name,
            mask.join(", ")
        )
    })
}

// ---------------------------------------------------------------------------
// models
// ---------------------------------------------------------------------------

fn model_fields(m: &mut pb::Model, c: &ModelCommon, mask: &mut Vec<String>) {
    if let Some(s) = &c.strategy {
        m.strategy = s.clone();
        mask.push("strategy".into());
    }
    if c.max_retries.is_some() || c.per_try_timeout.is_some() {
        let r = m.retry.get_or_insert_with(Default::default);
        if let Some(n) = c.max_retries {
            r.max_retries = Some(n);
            mask.push("retry.max_retries".into());
        }
        if let Some(d) = c.per_try_timeout {
            r.per_try_timeout_ms = ms(d);
            mask.push("retry.per_try_timeout_ms".into());
        }
    }
    if let Some(a) = &c.affinity {
        m.affinity = Some(pb::Affinity {
            kind: a.kind.clone(),
            header: a.header.clone(),
        });
        mask.push("affinity.kind".into());
        mask.push("affinity.header".into());
    }
    if let Some(d) = &c.description {
        m.description = d.clone();
        mask.push("description".into());
    }
    if !c.metadata.is_empty() {
        m.metadata = to_map(&c.metadata);
        mask.push("metadata".into());
    }
    if !c.aliases.is_empty() || c.no_aliases {
        m.aliases = c.aliases.clone();
        mask.push("aliases".into());
    }
    if let Some(n) = c.default_max_tokens {
        m.default_max_tokens = (n > 0).then_some(n);
        mask.push("default_max_tokens".into());
    }
}

fn backends_table(bs: &[BackendView]) -> String {
    let rows: Vec<Vec<String>> = bs
        .iter()
        .map(|b| {
            vec![
                b.model.clone(),
                b.name.clone(),
                b.provider.clone(),
                b.upstream_model.clone(),
                b.weight.to_string(),
                b.priority.to_string(),
                yes_no(b.enabled),
            ]
        })
        .collect();
    table::render(
        &[
            "MODEL",
            "NAME",
            "PROVIDER",
            "UPSTREAM_MODEL",
            "WEIGHT",
            "PRIORITY",
            "ENABLED",
        ],
        &rows,
    )
}

fn sort_backends(bs: &mut [BackendView]) {
    bs.sort_by(|a, b| (&a.model, a.priority, &a.name).cmp(&(&b.model, b.priority, &b.name)));
}

pub async fn models(ctx: &Ctx, admin: &mut Admin, cmd: ModelsCmd) -> Result<()> {
    match cmd {
        ModelsCmd::Add(a) => {
            let mut m = pb::Model {
                name: a.name,
                enabled: a.disabled.then_some(false),
                ..Default::default()
            };
            model_fields(&mut m, &a.common, &mut Vec::new());
            let m = admin
                .client
                .create_model(pb::CreateModelRequest { model: Some(m) })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = ModelView::from(&m);
            ctx.show(&v, || format!("created model {}\n", v.name))
        }
        ModelsCmd::List => {
            let ms = admin
                .client
                .list_models(pb::ListModelsRequest {})
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .models;
            let bs = admin
                .client
                .list_backends(pb::ListBackendsRequest::default())
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .backends;
            let mut views: Vec<ModelView> = ms.iter().map(ModelView::from).collect();
            for v in &mut views {
                if v.backends.is_empty() {
                    v.backends = bs
                        .iter()
                        .filter(|b| b.model == v.name)
                        .map(BackendView::from)
                        .collect();
                }
                sort_backends(&mut v.backends);
            }
            views.sort_by(|a, b| a.name.cmp(&b.name));
            ctx.show(&views, || {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.strategy.clone(),
                            v.backends.len().to_string(),
                            v.max_retries.to_string(),
                            v.affinity.clone(),
                            yes_no(v.enabled),
                        ]
                    })
                    .collect();
                table::render(
                    &["NAME", "STRATEGY", "BACKENDS", "RETRIES", "AFFINITY", "ENABLED"],
                    &rows,
                )
            })
        }
        ModelsCmd::Get { name } => {
            let m = admin
                .client
                .get_model(pb::GetModelRequest { name })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let mut v = ModelView::from(&m);
            sort_backends(&mut v.backends);
            ctx.show(&v, || {
                let mut rows = vec![
                    ("name", v.name.clone()),
                    ("strategy", v.strategy.clone()),
                    ("enabled", yes_no(v.enabled)),
                    ("description", or_dash(&v.description)),
                    ("max_retries", v.max_retries.to_string()),
                    ("per_try_timeout", dur_cell(v.per_try_timeout_ms)),
                    ("affinity", v.affinity.clone()),
                    ("metadata", map_cell(&v.metadata)),
                    ("created", time_cell(v.created_at_ms)),
                    ("updated", time_cell(v.updated_at_ms)),
                ];
                if !v.aliases.is_empty() {
                    rows.insert(7, ("aliases", v.aliases.join(", ")));
                }
                if let Some(n) = v.default_max_tokens {
                    rows.insert(7, ("default_max_tokens", n.to_string()));
                }
                let mut out = table::render_kv(&rows);
                out.push('\n');
                out.push_str(&backends_table(&v.backends));
                out
            })
        }
        ModelsCmd::Update(u) => {
            let mut m = pb::Model {
                name: u.name,
                ..Default::default()
            };
            let mut mask = Vec::new();
            if u.enable || u.disable {
                m.enabled = Some(u.enable);
                mask.push("enabled".to_string());
            }
            model_fields(&mut m, &u.common, &mut mask);
            if mask.is_empty() {
                return Err(nothing_to_update("models"));
            }
            let req = pb::UpdateModelRequest {
                model: Some(m),
                update_mask: mask.clone(),
            };
            let m = admin
                .client
                .update_model(req)
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = ModelView::from(&m);
            ctx.show(&v, || format!("updated model {} ({})\n", v.name, mask.join(", ")))
        }
        ModelsCmd::Remove { name } => {
            let r = admin
                .client
                .delete_model(pb::DeleteModelRequest { name: name.clone() })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            deleted(ctx, "model", name, r.version)
        }
        ModelsCmd::SetPrice(p) => {
            let price = p.price().map_err(UsageError)?;
            set_price(ctx, admin, p.model, p.backend, Some(price)).await
        }
        ModelsCmd::ClearPrice { model, backend } => set_price(ctx, admin, model, backend, None).await,
    }
}

/// Set (or with `None` clear) the price of `model`, or of its backend `backend`.
async fn set_price(
    ctx: &Ctx,
    admin: &mut Admin,
    model: String,
    backend: Option<String>,
    price: Option<pb::Price>,
) -> Result<()> {
    let mask = vec!["price".to_string()];
    let (what, shown) = match backend {
        Some(name) => {
            let b = admin
                .client
                .update_backend(pb::UpdateBackendRequest {
                    backend: Some(pb::Backend {
                        model,
                        name,
                        price,
                        ..Default::default()
                    }),
                    update_mask: mask,
                })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            (format!("backend {}/{}", b.model, b.name), b.price)
        }
        None => {
            let m = admin
                .client
                .update_model(pb::UpdateModelRequest {
                    model: Some(pb::Model {
                        name: model,
                        price,
                        ..Default::default()
                    }),
                    update_mask: mask,
                })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            (format!("model {}", m.name), m.price)
        }
    };
    let v = PriceView::new(&what, shown.as_ref());
    ctx.show(&v, || match &shown {
        Some(_) => format!("price of {what} set: {}\n", v.text()),
        None => format!("price of {what} cleared\n"),
    })
}

/// A price as `set-price` and `prices` show it: units of the currency per million tokens.
#[derive(Debug, Serialize)]
pub struct PriceView {
    pub name: String,
    /// Nano-units per token (= thousandths of a unit per million tokens); `null` = unset.
    pub input: Option<u64>,
    pub cached_input: Option<u64>,
    pub cache_write: Option<u64>,
    pub output: Option<u64>,
    pub reasoning: Option<u64>,
}

impl PriceView {
    pub fn new(name: &str, p: Option<&pb::Price>) -> PriceView {
        let p = p.copied().unwrap_or_default();
        PriceView {
            name: name.to_string(),
            input: p.input,
            cached_input: p.cached_input,
            cache_write: p.cache_write,
            output: p.output,
            reasoning: p.reasoning,
        }
    }

    /// Each class per million tokens; an unset class shows the price it falls back to.
    pub fn cells(&self) -> [String; 5] {
        let show = |v: Option<u64>, fallback: Option<u64>| match (v, fallback) {
            (Some(n), _) => price::fmt_price(n),
            (None, Some(n)) => format!("({})", price::fmt_price(n)),
            (None, None) => "-".into(),
        };
        [
            show(self.input, None),
            show(self.cached_input, self.input),
            show(self.cache_write, self.input),
            show(self.output, None),
            show(self.reasoning, self.output),
        ]
    }

    fn text(&self) -> String {
        let c = self.cells();
        format!(
            "input {}, cached input {}, cache write {}, output {}, reasoning {} per million tokens",
            c[0], c[1], c[2], c[3], c[4]
        )
    }
}

/// `switchyard prices`: the default table.
pub fn prices(ctx: &Ctx) -> Result<()> {
    let table = price::default_table()?;
    let views: Vec<PriceView> = table.iter().map(|(m, p)| PriceView::new(m, Some(p))).collect();
    ctx.show(&views, || {
        let rows: Vec<Vec<String>> = views
            .iter()
            .map(|v| std::iter::once(v.name.clone()).chain(v.cells()).collect())
            .collect();
        let mut t = table::render(
            &[
                "UPSTREAM_MODEL",
                "INPUT",
                "CACHED_INPUT",
                "CACHE_WRITE",
                "OUTPUT",
                "REASONING",
            ],
            &rows,
        );
        t.push_str("Per million tokens (USD list prices; check them). (x) = falls back to that price.\n");
        t
    })
}

// ---------------------------------------------------------------------------
// backends
// ---------------------------------------------------------------------------

pub async fn backends(ctx: &Ctx, admin: &mut Admin, cmd: BackendsCmd) -> Result<()> {
    match cmd {
        BackendsCmd::Add(a) => {
            let b = pb::Backend {
                model: a.model,
                name: a.name.unwrap_or_default(),
                provider: a.provider,
                upstream_model: a.upstream_model.unwrap_or_default(),
                weight: a.weight,
                priority: a.priority,
                enabled: a.disabled.then_some(false),
                ..Default::default()
            };
            let b = admin
                .client
                .create_backend(pb::CreateBackendRequest { backend: Some(b) })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = BackendView::from(&b);
            ctx.show(&v, || {
                format!(
                    "created backend {}/{} -> {} {}\n",
                    v.model, v.name, v.provider, v.upstream_model
                )
            })
        }
        BackendsCmd::List { model } => {
            let bs = admin
                .client
                .list_backends(pb::ListBackendsRequest {
                    model: model.unwrap_or_default(),
                })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .backends;
            let mut views: Vec<BackendView> = bs.iter().map(BackendView::from).collect();
            sort_backends(&mut views);
            ctx.show(&views, || backends_table(&views))
        }
        BackendsCmd::Update(u) => {
            let mut b = pb::Backend {
                model: u.model,
                name: u.name,
                ..Default::default()
            };
            let mut mask = Vec::new();
            if let Some(p) = u.provider {
                b.provider = p;
                mask.push("provider".to_string());
            }
            if let Some(m) = u.upstream_model {
                b.upstream_model = m;
                mask.push("upstream_model".to_string());
            }
            if let Some(w) = u.weight {
                b.weight = Some(w);
                mask.push("weight".to_string());
            }
            if let Some(p) = u.priority {
                b.priority = Some(p);
                mask.push("priority".to_string());
            }
            if u.enable || u.disable {
                b.enabled = Some(u.enable);
                mask.push("enabled".to_string());
            }
            if mask.is_empty() {
                return Err(nothing_to_update("backends"));
            }
            let req = pb::UpdateBackendRequest {
                backend: Some(b),
                update_mask: mask.clone(),
            };
            let b = admin
                .client
                .update_backend(req)
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = BackendView::from(&b);
            ctx.show(&v, || {
                format!("updated backend {}/{} ({})\n", v.model, v.name, mask.join(", "))
            })
        }
        BackendsCmd::Remove { model, name } => {
            let r = admin
                .client
                .delete_backend(pb::DeleteBackendRequest {
                    model: model.clone(),
                    name: name.clone(),
                })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            deleted(ctx, "backend", format!("{model}/{name}"), r.version)
        }
    }
}

// ---------------------------------------------------------------------------
// keys
// ---------------------------------------------------------------------------

const SHOWN_ONCE: &str = "Save this key now: it is shown only once and cannot be retrieved later.";

fn keys_table(keys: &[KeyView]) -> String {
    let now = now_ms();
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                or_dash(&k.prefix),
                if k.allowed_models.is_empty() {
                    "*".to_string()
                } else {
                    k.allowed_models.join(",")
                },
                key_status(k, now).to_string(),
                or_dash(&k.team),
                yes_no(k.allow_pin),
                if k.expires_at_ms > 0 {
                    time_cell(k.expires_at_ms)
                } else {
                    "never".to_string()
                },
                time_cell(k.created_at_ms),
            ]
        })
        .collect();
    table::render(
        &[
            "NAME", "PREFIX", "MODELS", "STATUS", "TEAM", "PIN", "EXPIRES", "CREATED",
        ],
        &rows,
    )
}

/// `None` = never (0).
fn expiry_ms(e: Option<Expiry>) -> i64 {
    match e {
        None | Some(Expiry::Never) => 0,
        Some(Expiry::In(d)) => now_ms() + d.as_millis() as i64,
        Some(Expiry::At(t)) => system_time_ms(t),
    }
}

/// Shortest client token `keys create --import-env` accepts: the control plane's limit.
pub const IMPORTED_KEY_MIN_CHARS: usize = switchyard_control::admin::IMPORTED_KEY_MIN_CHARS;

/// Check an imported token here, so that the error names the flag and the variable the
/// user gave rather than a field of the RPC. The value itself never appears in it.
fn check_imported_key(var: &str, v: String) -> Result<String> {
    let t = v.trim();
    if t.chars().any(char::is_whitespace) {
        return Err(UsageError(format!(
            "the token in {var} (--import-env {var}) contains whitespace; a client key is one word"
        ))
        .into());
    }
    let n = t.chars().count();
    if n < IMPORTED_KEY_MIN_CHARS {
        return Err(UsageError(format!(
            "the token in {var} (--import-env {var}) has {n} characters; an imported client key \
             needs at least {IMPORTED_KEY_MIN_CHARS} (a shorter one is too easy to guess)"
        ))
        .into());
    }
    Ok(t.to_string())
}

pub async fn keys(ctx: &Ctx, admin: &mut Admin, cmd: KeysCmd) -> Result<()> {
    match cmd {
        KeysCmd::Create(c) => {
            let expires_at_ms = expiry_ms(c.expires);
            let import_plaintext = match &c.import_env {
                None => String::new(),
                Some(var) => match getenv(var) {
                    Some(v) if !v.is_empty() => check_imported_key(var, v)?,
                    _ => anyhow::bail!("environment variable {var} (--import-env) is not set"),
                },
            };
            let req = pb::CreateApiKeyRequest {
                team: c.team.unwrap_or_default(),
                name: c.name,
                allowed_models: c.models,
                expires_at_ms,
                description: c.description.unwrap_or_default(),
                import_plaintext,
                allow_pin: c.allow_pin,
            };
            let r = admin
                .client
                .create_api_key(req)
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let key = KeyView::from(&r.key.unwrap_or_default());
            let imported = c.import_env.is_some();
            let v = CreatedKeyView {
                key,
                plaintext: r.plaintext,
            };
            match ctx.output {
                Output::Json => ctx.json(&v)?,
                Output::Table => {
                    let mut text = format!("created key {} ({})\n", v.key.name, or_dash(&v.key.prefix));
                    if !imported && !v.plaintext.is_empty() {
                        text.push_str(&v.plaintext);
                        text.push('\n');
                    }
                    out(&text)?;
                }
            }
            if !imported {
                eprintln!("{SHOWN_ONCE}");
            }
            Ok(())
        }
        KeysCmd::List => {
            let mut keys = admin
                .client
                .list_api_keys(pb::ListApiKeysRequest {})
                .await
                .map_err(|s| admin.status(s))?
                .into_inner()
                .keys;
            keys.sort_by(|a, b| a.name.cmp(&b.name));
            let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
            ctx.show(&views, || keys_table(&views))
        }
        KeysCmd::Get { name } => {
            let k = admin
                .client
                .get_api_key(pb::GetApiKeyRequest { name })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = KeyView::from(&k);
            ctx.show(&v, || keys_table(std::slice::from_ref(&v)))
        }
        KeysCmd::Update(u) => {
            let mut k = pb::ApiKey {
                name: u.name,
                ..Default::default()
            };
            let mut mask = Vec::new();
            if let Some(models) = u.models {
                k.allowed_models = models.into_iter().filter(|m| !m.is_empty()).collect();
                mask.push("allowed_models".to_string());
            }
            if let Some(e) = u.expires {
                k.expires_at_ms = expiry_ms(Some(e));
                mask.push("expires_at_ms".to_string());
            }
            if let Some(d) = u.description {
                k.description = d;
                mask.push("description".to_string());
            }
            if u.enable || u.disable {
                k.enabled = Some(u.enable);
                mask.push("enabled".to_string());
            }
            if u.allow_pin || u.no_allow_pin {
                k.allow_pin = u.allow_pin;
                mask.push("allow_pin".to_string());
            }
            if let Some(t) = u.team {
                k.team = t;
                mask.push("team".to_string());
            }
            if mask.is_empty() {
                return Err(nothing_to_update("keys"));
            }
            let req = pb::UpdateApiKeyRequest {
                key: Some(k),
                update_mask: mask.clone(),
            };
            let k = admin
                .client
                .update_api_key(req)
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = KeyView::from(&k);
            ctx.show(&v, || format!("updated key {} ({})\n", v.name, mask.join(", ")))
        }
        KeysCmd::Revoke { name } => {
            let k = admin
                .client
                .revoke_api_key(pb::RevokeApiKeyRequest { name })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            let v = KeyView::from(&k);
            ctx.show(&v, || format!("revoked key {}\n", v.name))
        }
        KeysCmd::Remove { name } => {
            let r = admin
                .client
                .delete_api_key(pb::DeleteApiKeyRequest { name: name.clone() })
                .await
                .map_err(|s| admin.status(s))?
                .into_inner();
            deleted(ctx, "key", name, r.version)
        }
    }
}

// ---------------------------------------------------------------------------
// apply / export
// ---------------------------------------------------------------------------

/// A document read from a file, ready to send, and the credentials whose `secret_env`
/// is unset (sent empty: see [`check_unset_secrets`]).
#[derive(Debug, Default)]
pub struct Loaded {
    pub document: pb::ConfigDocument,
    pub unset: Vec<doc::UnsetSecret>,
}

/// Read and convert the document (secrets resolved) without contacting the server.
pub fn load_document(file: &str) -> Result<Loaded> {
    let (text, origin, base_dir) = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("read the document from stdin")?;
        (s, "<stdin>".to_string(), None)
    } else {
        let path = Path::new(file);
        let s = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
        (s, file.to_string(), path.parent().map(Path::to_path_buf))
    };
    let parsed = doc::parse(&text, &origin)?;
    let env = SecretEnv {
        base_dir: base_dir.as_deref(),
        getenv: &getenv,
    };
    let document = parsed
        .into_proto(&env)
        .map_err(|e| anyhow::anyhow!("{origin}: {e:#}"))?;
    Ok(Loaded {
        document,
        unset: parsed.unset_secrets(&env),
    })
}

/// Credentials whose `secret_env` is unset keep their stored secret, with a note on
/// stderr (also under `--dry-run`); one that does not exist yet has none to keep, and
/// that is an error naming the variable. So a file applied once with its variables set
/// can be re-applied after an edit without them.
pub async fn check_unset_secrets(admin: &mut Admin, origin: &str, unset: &[doc::UnsetSecret]) -> Result<()> {
    if unset.is_empty() {
        return Ok(());
    }
    let stored = admin
        .client
        .list_credentials(pb::ListCredentialsRequest::default())
        .await
        .map_err(|s| admin.status(s))?
        .into_inner()
        .credentials;
    let exists = |u: &doc::UnsetSecret| {
        stored
            .iter()
            .any(|c| c.provider == u.provider && c.name == u.credential)
    };
    if let Some(u) = unset.iter().find(|u| !exists(u)) {
        return Err(anyhow::anyhow!("{origin}: {:#}", u.error()));
    }
    for u in unset {
        eprintln!("{}", u.notice());
    }
    Ok(())
}

/// Human rendering of an apply answer.
pub fn apply_text(r: &pb::ApplyResponse) -> String {
    let mut out = String::new();
    for c in &r.changes {
        out.push_str(&change_line(c));
        out.push('\n');
    }
    let n = r.changes.len();
    let plural = if n == 1 { "" } else { "s" };
    if r.dry_run {
        if n == 0 {
            out.push_str("no changes (dry run)\n");
        } else {
            out.push_str(&format!("{n} change{plural} (dry run, nothing changed)\n"));
        }
    } else if n == 0 {
        out.push_str("no changes\n");
    } else {
        out.push_str(&format!(
            "{n} change{plural} applied (config version {})\n",
            r.version
        ));
    }
    for k in &r.created_keys {
        out.push_str(&format!("key {}: {}\n", k.name, k.plaintext));
    }
    out
}

pub async fn apply(ctx: &Ctx, admin: &mut Admin, a: ApplyArgs, loaded: Loaded) -> Result<()> {
    let origin = if a.file == "-" { "<stdin>" } else { &a.file };
    check_unset_secrets(admin, origin, &loaded.unset).await?;
    let req = pb::ApplyRequest {
        document: Some(loaded.document),
        dry_run: a.dry_run,
        prune: a.prune,
    };
    let r = admin
        .client
        .apply(req)
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let v = ApplyView {
        dry_run: r.dry_run,
        version: r.version,
        changes: r
            .changes
            .iter()
            .map(|c| ChangeView {
                kind: c.kind.clone(),
                name: c.name.clone(),
                action: c.action.clone(),
                fields: c.fields.clone(),
            })
            .collect(),
        created_keys: r
            .created_keys
            .iter()
            .map(|k| CreatedKeySecret {
                name: k.name.clone(),
                plaintext: k.plaintext.clone(),
            })
            .collect(),
    };
    ctx.show(&v, || apply_text(&r))?;
    if !r.created_keys.is_empty() {
        eprintln!("{SHOWN_ONCE}");
    }
    Ok(())
}

pub async fn export(ctx: &Ctx, admin: &mut Admin, a: ExportArgs) -> Result<()> {
    let r = admin
        .client
        .export(pb::ExportRequest {
            include_secrets: a.include_secrets,
        })
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let mut document = r.document.unwrap_or_default();
    // Stable output: sort everything by name.
    document.providers.sort_by(|a, b| a.name.cmp(&b.name));
    for p in &mut document.providers {
        p.credentials.sort_by(|a, b| a.name.cmp(&b.name));
    }
    document.models.sort_by(|a, b| a.name.cmp(&b.name));
    for m in &mut document.models {
        m.backends
            .sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    }
    document.keys.sort_by(|a, b| a.name.cmp(&b.name));
    let file = FileDoc::from_proto(&document, a.include_secrets);
    match ctx.output {
        Output::Json => ctx.json(&file),
        Output::Table => {
            let secrets_note = if a.include_secrets {
                "# WARNING: this file contains credential secrets in the clear. Do not commit it.\n"
            } else {
                "# Credential secrets are not included: applying this file keeps the stored ones.\n\
                 # To recreate credentials elsewhere, add `secret_env = \"VAR\"` to each of them.\n"
            };
            let header = format!(
                "# Switchyard configuration, exported at config version {}.\n\
                 # Apply with: switchyard apply -f FILE   (add --prune to delete what it does not name)\n\
                 {secrets_note}\n",
                r.version
            );
            out(&file.to_toml(&header)?)
        }
    }
}

// ---------------------------------------------------------------------------
// workers / status
// ---------------------------------------------------------------------------

pub async fn workers(ctx: &Ctx, admin: &mut Admin, _cmd: WorkersCmd) -> Result<()> {
    let r = admin
        .client
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let mut workers: Vec<WorkerView> = r
        .workers
        .iter()
        .map(|w| WorkerView::new(w, r.current_version))
        .collect();
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    let v = WorkersView {
        current_version: r.current_version,
        workers,
    };
    ctx.show(&v, || {
        let rows: Vec<Vec<String>> = v
            .workers
            .iter()
            .map(|w| {
                let rejected = if w.rejected_version > 0 {
                    format!("v{}: {}", w.rejected_version, w.rejected_reason)
                } else {
                    "-".to_string()
                };
                vec![
                    w.worker_id.clone(),
                    or_dash(&w.address),
                    yes_no(w.connected),
                    w.applied_version.to_string(),
                    yes_no(w.in_sync),
                    time_cell(w.last_seen_ms),
                    or_dash(&w.software_version),
                    rejected,
                ]
            })
            .collect();
        format!(
            "config version {}\n{}",
            v.current_version,
            table::render(
                &[
                    "WORKER",
                    "ADDRESS",
                    "CONNECTED",
                    "APPLIED",
                    "IN_SYNC",
                    "LAST_SEEN",
                    "VERSION",
                    "REJECTED"
                ],
                &rows
            )
        )
    })
}

pub async fn status(ctx: &Ctx, admin: &mut Admin) -> Result<()> {
    let s = admin
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let v = StatusView {
        control_url: admin.url.clone(),
        version: s.version,
        snapshot_hash: s.snapshot_hash,
        store: s.store,
        store_location: s.store_location,
        workers_connected: s.workers_connected,
        workers_in_sync: s.workers_in_sync,
        software_version: s.software_version,
        started_at_ms: s.started_at_ms,
        secrets_encrypted: s.secrets_encrypted,
        transport: s.transport,
        insecure: s.insecure,
    };
    ctx.show(&v, || {
        table::render_kv(&[
            ("control", v.control_url.clone()),
            ("software", or_dash(&v.software_version)),
            ("config version", v.version.to_string()),
            ("snapshot hash", or_dash(&v.snapshot_hash)),
            (
                "store",
                format!("{} ({})", or_dash(&v.store), or_dash(&v.store_location)),
            ),
            ("secrets encrypted", yes_no(v.secrets_encrypted)),
            (
                "transport",
                if v.insecure {
                    format!(
                        "{} (--insecure: snapshots may go unencrypted to other hosts)",
                        or_dash(&v.transport)
                    )
                } else {
                    or_dash(&v.transport)
                },
            ),
            ("started", time_cell(v.started_at_ms)),
            (
                "workers in sync",
                format!("{}/{} connected", v.workers_in_sync, v.workers_connected),
            ),
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_credential_name_skips_taken() {
        let c = |n: &str| pb::Credential {
            name: n.into(),
            ..Default::default()
        };
        assert_eq!(next_credential_name(&[]), "key-1");
        assert_eq!(next_credential_name(&[c("key-1"), c("key-3")]), "key-2");
    }

    #[test]
    fn provider_update_mask_names_only_given_fields() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "switchyard",
            "providers",
            "update",
            "p",
            "--timeout",
            "90s",
            "--health-interval",
            "15s",
            "--auth-header",
            "x-jwt",
        ])
        .unwrap();
        let Command::Providers(ProvidersCmd::Update(u)) = cli.command else {
            panic!()
        };
        let mut p = pb::Provider::default();
        let mut mask = Vec::new();
        provider_fields(&mut p, &u.common, &mut mask).unwrap();
        assert_eq!(mask, ["request_timeout_ms", "auth.header", "health.interval_ms"]);
        assert_eq!(p.request_timeout_ms, 90_000);
        assert_eq!(p.health.unwrap().interval_ms, 15_000);
    }

    #[test]
    fn provider_egress_flags() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "proxy-secret\n").unwrap();
        let cli = Cli::try_parse_from([
            "switchyard",
            "providers",
            "update",
            "p",
            "--proxy",
            "http://egress@proxy:3128",
            "--proxy-password-file",
            pw.to_str().unwrap(),
            "--ca-file",
            "/etc/ca.pem",
            "--client-cert-file",
            "/etc/c.pem",
            "--client-key-file",
            "/etc/k.pem",
        ])
        .unwrap();
        let Command::Providers(ProvidersCmd::Update(u)) = cli.command else {
            panic!()
        };
        let mut p = pb::Provider::default();
        let mut mask = Vec::new();
        provider_fields(&mut p, &u.common, &mut mask).unwrap();
        assert_eq!(
            mask,
            [
                "proxy",
                "proxy_password",
                "ca_file",
                "client_cert_file",
                "client_key_file"
            ]
        );
        assert_eq!(p.proxy_password, "proxy-secret");
        assert_eq!(p.client_key_file, "/etc/k.pem");
    }

    #[test]
    fn apply_text_variants() {
        let ch = pb::Change {
            kind: "provider".into(),
            name: "openai".into(),
            action: "create".into(),
            fields: vec![],
        };
        let mut r = pb::ApplyResponse {
            changes: vec![ch],
            version: 7,
            created_keys: vec![],
            dry_run: true,
        };
        assert_eq!(
            apply_text(&r),
            "+ provider openai\n1 change (dry run, nothing changed)\n"
        );
        r.dry_run = false;
        assert_eq!(
            apply_text(&r),
            "+ provider openai\n1 change applied (config version 7)\n"
        );
        r.changes.clear();
        assert_eq!(apply_text(&r), "no changes\n");
    }
}
