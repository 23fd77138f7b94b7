//! The declarative `switchyard.toml` format: what `apply` reads and `export` prints.
//!
//! Parsing is strict (`deny_unknown_fields`, errors name the file and the key). The file
//! omits defaults; [`FileDoc::into_proto`] fills them in so that the control plane receives
//! the complete desired state, and [`FileDoc::from_proto`] leaves out values equal to those
//! same defaults. Because both directions use one table of defaults, `export` followed by
//! `apply` is an exact round trip whatever the server stores.
//!
//! Secrets are never in the file by default: a credential names an env var (`secret_env`)
//! or a file (`secret_file`) and the CLI resolves it just before sending.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use switchyard_proto as pb;

use crate::price::FilePrice;
use crate::secret::read_secret_file;

/// Defaults the CLI fills in for omitted fields (documented in the proto).
pub mod defaults {
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const REQUEST_TIMEOUT_MS: u64 = 60_000;
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    pub const TOTAL_TIMEOUT_MS: u64 = 0;
    pub const CREDENTIAL_STRATEGY: &str = "round_robin";
    pub const HEALTH_INTERVAL_MS: u64 = 30_000;
    pub const HEALTH_TIMEOUT_MS: u64 = 10_000;
    pub const HEALTHY_BELOW: u32 = 500;
    pub const STRATEGY: &str = "round_robin";
    pub const MAX_RETRIES: u32 = 2;
    pub const WEIGHT: u32 = 1;
    pub const PRIORITY: i32 = 0;

    /// The default health probe depends on the provider kind.
    pub fn probe(kind: &str) -> &'static str {
        if kind == "anthropic" {
            "messages:claude-3-5-haiku-latest"
        } else {
            "models"
        }
    }
}

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<FileProvider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<FileModel>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<FileKey>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<FileLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProvider {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Time to response headers.
    #[serde(default, alias = "request_timeout", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<FileAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<FileHealth>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// API paths forwarded beyond the kind's inference endpoints (`/v1/files`,
    /// `/v1/fine_tuning/*`). Omitted = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_paths: Vec<String>,
    /// Account-selecting client headers let through. Omitted = none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
    /// Outbound HTTP proxy: `http://[user@]host[:port]` or `env`. Omitted = direct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Environment variable holding the proxy user's password (resolved by the CLI;
    /// unset: the stored one is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_password_env: Option<String>,
    /// PEM files on the worker host: the upstream's CAs (replacing the public roots),
    /// and a client certificate and key for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<FileCredential>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_below: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredential {
    pub name: String,
    /// Environment variable holding the secret (resolved by the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// File holding the secret, relative to the document's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// The secret itself. Discouraged: files end up in git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModel {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// `none`, `user` or `header:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The price of every backend that sets none (currency units per million tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<FilePrice>,
    /// Other names clients may ask the model by: exact, or patterns with `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// `max_tokens` for a request translated to Anthropic whose client set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<FileBackend>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub provider: String,
    /// Default: the provider name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Default: the model's public name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The price of `upstream_model` on this provider. Omitted = the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<FilePrice>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKey {
    pub name: String,
    /// Models the key may use; empty or omitted = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// RFC 3339 time, quoted or as a TOML datetime. Omitted = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<toml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
    /// May pin a backend with `x-switchyard-backend`. Omitted = false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_pin: Option<bool>,
    /// The key's team. Omitted = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// `[[limits]]`: a quota held across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimit {
    pub name: String,
    /// `key:NAME`, `team:NAME`, `model:NAME` or `credential:PROVIDER/NAME`.
    pub scope: String,
    /// `requests`, `tokens`, `input_tokens`, `output_tokens`, `concurrency` or `spend`.
    pub kind: String,
    /// `minute`, `hour`, `day` or `month`; omitted for `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// A count; for `spend`, units of the currency (`25`, `0.5` or `"0.50"`).
    pub amount: toml::Value,
    /// Omitted = `enforce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Omitted = `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_outage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

// ---------------------------------------------------------------------------
// reading
// ---------------------------------------------------------------------------

/// Parse a document. `origin` (a file name or `<stdin>`) prefixes every error.
pub fn parse(text: &str, origin: &str) -> Result<FileDoc> {
    toml::from_str(text).map_err(|e| anyhow!("{origin}: {}", e.to_string().trim_end()))
}

/// Where secrets come from while converting: env lookups and the base dir for `secret_file`.
pub struct SecretEnv<'a> {
    pub base_dir: Option<&'a Path>,
    pub getenv: &'a dyn Fn(&str) -> Option<String>,
}

fn dur_ms(path: &str, v: &Option<String>, default: u64) -> Result<u64> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| anyhow!("{path}: invalid duration `{s}`: {e} (use e.g. `30s`, `2m`)")),
    }
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl FileDoc {
    /// Validate and convert into the proto document, filling defaults and resolving secrets.
    pub fn into_proto(&self, env: &SecretEnv<'_>) -> Result<pb::ConfigDocument> {
        let mut doc = pb::ConfigDocument::default();
        for p in &self.providers {
            doc.providers.push(p.to_proto(env)?);
        }
        for m in &self.models {
            doc.models.push(m.to_proto()?);
        }
        for k in &self.keys {
            doc.keys.push(k.to_proto()?);
        }
        for l in &self.limits {
            doc.limits.push(l.to_proto()?);
        }
        Ok(doc)
    }

    /// The credentials whose `secret_env` variable is unset or empty. Converting sends
    /// them with an empty secret, which the control plane reads as "keep the stored one":
    /// re-applying a file after `up` or in another shell does not need every variable
    /// again. For a credential that does not exist yet it is an error
    /// ([`UnsetSecret::error`]), which only the caller, knowing the stored state, can tell.
    pub fn unset_secrets(&self, env: &SecretEnv<'_>) -> Vec<UnsetSecret> {
        let mut out = Vec::new();
        for p in &self.providers {
            for c in &p.credentials {
                let Some(var) = &c.secret_env else { continue };
                if (env.getenv)(var).is_none_or(|v| v.is_empty()) {
                    out.push(UnsetSecret {
                        provider: p.name.clone(),
                        credential: c.name.clone(),
                        var: var.clone(),
                    });
                }
            }
        }
        out
    }

    /// Convert an exported proto document into the file form, omitting defaults.
    pub fn from_proto(doc: &pb::ConfigDocument, include_secrets: bool) -> FileDoc {
        FileDoc {
            providers: doc
                .providers
                .iter()
                .map(|p| FileProvider::from_proto(p, include_secrets))
                .collect(),
            models: doc.models.iter().map(FileModel::from_proto).collect(),
            keys: doc.keys.iter().map(FileKey::from_proto).collect(),
            limits: doc.limits.iter().map(FileLimit::from_proto).collect(),
        }
    }

    /// Render as TOML with a header comment.
    pub fn to_toml(&self, header: &str) -> Result<String> {
        let body = toml::to_string(self).context("render TOML")?;
        Ok(format!("{header}{body}"))
    }
}

impl FileProvider {
    fn to_proto(&self, env: &SecretEnv<'_>) -> Result<pb::Provider> {
        let at = format!("providers.{}", self.name);
        let health = self.health.clone().unwrap_or_default();
        let auth = self.auth.clone().unwrap_or_default();
        let mut credentials = Vec::new();
        for c in &self.credentials {
            credentials.push(c.to_proto(&self.name, env)?);
        }
        Ok(pb::Provider {
            name: self.name.clone(),
            kind: self.kind.clone(),
            base_url: self.base_url.clone(),
            connect_timeout_ms: dur_ms(
                &format!("{at}.connect_timeout"),
                &self.connect_timeout,
                defaults::CONNECT_TIMEOUT_MS,
            )?,
            request_timeout_ms: dur_ms(
                &format!("{at}.timeout"),
                &self.timeout,
                defaults::REQUEST_TIMEOUT_MS,
            )?,
            idle_timeout_ms: dur_ms(
                &format!("{at}.idle_timeout"),
                &self.idle_timeout,
                defaults::IDLE_TIMEOUT_MS,
            )?,
            total_timeout_ms: dur_ms(
                &format!("{at}.total_timeout"),
                &self.total_timeout,
                defaults::TOTAL_TIMEOUT_MS,
            )?,
            auth: Some(pb::AuthScheme {
                header: auth.header.unwrap_or_default(),
                prefix: auth.prefix.unwrap_or_default(),
            }),
            headers: map(&self.headers),
            health: Some(pb::HealthCheck {
                enabled: Some(health.enabled.unwrap_or(true)),
                interval_ms: dur_ms(
                    &format!("{at}.health.interval"),
                    &health.interval,
                    defaults::HEALTH_INTERVAL_MS,
                )?,
                timeout_ms: dur_ms(
                    &format!("{at}.health.timeout"),
                    &health.timeout,
                    defaults::HEALTH_TIMEOUT_MS,
                )?,
                probe: health
                    .probe
                    .unwrap_or_else(|| defaults::probe(&self.kind).to_string()),
                healthy_below: health.healthy_below.unwrap_or(defaults::HEALTHY_BELOW),
            }),
            credential_strategy: self
                .credential_strategy
                .clone()
                .unwrap_or_else(|| defaults::CREDENTIAL_STRATEGY.to_string()),
            enabled: Some(self.enabled.unwrap_or(true)),
            description: self.description.clone().unwrap_or_default(),
            metadata: map(&self.metadata),
            credentials,
            created_at_ms: 0,
            updated_at_ms: 0,
            allow_paths: self.allow_paths.clone(),
            forward_headers: self.forward_headers.clone(),
            proxy: self.proxy.clone().unwrap_or_default(),
            // Unset: empty, and control keeps the stored password.
            proxy_password: self
                .proxy_password_env
                .as_deref()
                .and_then(|v| (env.getenv)(v))
                .unwrap_or_default(),
            ca_file: self.ca_file.clone().unwrap_or_default(),
            client_cert_file: self.client_cert_file.clone().unwrap_or_default(),
            client_key_file: self.client_key_file.clone().unwrap_or_default(),
        })
    }

    fn from_proto(p: &pb::Provider, include_secrets: bool) -> FileProvider {
        let dur = |ms: u64, default: u64| (ms != default).then(|| fmt_ms(ms));
        let auth = p.auth.clone().unwrap_or_default();
        let auth = FileAuth {
            header: non_empty(&auth.header),
            prefix: non_empty(&auth.prefix),
        };
        let health = p.health.clone().unwrap_or_default();
        let health = FileHealth {
            enabled: health.enabled.filter(|e| !e),
            interval: dur(health.interval_ms, defaults::HEALTH_INTERVAL_MS),
            timeout: dur(health.timeout_ms, defaults::HEALTH_TIMEOUT_MS),
            probe: (health.probe != defaults::probe(&p.kind)).then(|| health.probe.clone()),
            healthy_below: (health.healthy_below != defaults::HEALTHY_BELOW).then_some(health.healthy_below),
        };
        FileProvider {
            name: p.name.clone(),
            kind: p.kind.clone(),
            base_url: p.base_url.clone(),
            description: non_empty(&p.description),
            enabled: p.enabled.filter(|e| !e),
            timeout: dur(p.request_timeout_ms, defaults::REQUEST_TIMEOUT_MS),
            connect_timeout: dur(p.connect_timeout_ms, defaults::CONNECT_TIMEOUT_MS),
            idle_timeout: dur(p.idle_timeout_ms, defaults::IDLE_TIMEOUT_MS),
            total_timeout: dur(p.total_timeout_ms, defaults::TOTAL_TIMEOUT_MS),
            credential_strategy: (p.credential_strategy != defaults::CREDENTIAL_STRATEGY)
                .then(|| p.credential_strategy.clone()),
            auth: (auth != FileAuth::default()).then_some(auth),
            health: (health != FileHealth::default()).then_some(health),
            headers: p.headers.clone().into_iter().collect(),
            allow_paths: p.allow_paths.clone(),
            forward_headers: p.forward_headers.clone(),
            proxy: non_empty(&p.proxy),
            // Never exported: name the variable to read it from when applying.
            proxy_password_env: None,
            ca_file: non_empty(&p.ca_file),
            client_cert_file: non_empty(&p.client_cert_file),
            client_key_file: non_empty(&p.client_key_file),
            metadata: p.metadata.clone().into_iter().collect(),
            credentials: p
                .credentials
                .iter()
                .map(|c| FileCredential {
                    name: c.name.clone(),
                    secret_env: None,
                    secret_file: None,
                    secret: (include_secrets && !c.secret.is_empty()).then(|| c.secret.clone()),
                    weight: c.weight.filter(|w| *w != defaults::WEIGHT),
                    enabled: c.enabled.filter(|e| !e),
                    description: non_empty(&c.description),
                    metadata: c.metadata.clone().into_iter().collect(),
                })
                .collect(),
        }
    }
}

impl FileCredential {
    fn to_proto(&self, provider: &str, env: &SecretEnv<'_>) -> Result<pb::Credential> {
        let at = format!("providers.{provider}.credentials.{}", self.name);
        let sources =
            self.secret_env.is_some() as u8 + self.secret_file.is_some() as u8 + self.secret.is_some() as u8;
        if sources > 1 {
            bail!("{at}: give only one of secret_env, secret_file and secret");
        }
        let secret = if let Some(var) = &self.secret_env {
            // Unset = empty = keep the stored secret; [`FileDoc::unset_secrets`] lists these
            // so that the caller can refuse them for credentials that do not exist yet.
            (env.getenv)(var).unwrap_or_default()
        } else if let Some(file) = &self.secret_file {
            let path = match env.base_dir {
                Some(dir) => dir.join(file),
                None => file.into(),
            };
            read_secret_file(&path).with_context(|| format!("{at}: secret_file"))?
        } else {
            // Empty = keep the stored secret (how a redacted export re-applies).
            self.secret.clone().unwrap_or_default()
        };
        Ok(pb::Credential {
            provider: provider.to_string(),
            name: self.name.clone(),
            secret,
            weight: Some(self.weight.unwrap_or(defaults::WEIGHT)),
            enabled: Some(self.enabled.unwrap_or(true)),
            metadata: map(&self.metadata),
            description: self.description.clone().unwrap_or_default(),
            created_at_ms: 0,
            updated_at_ms: 0,
        })
    }
}

/// A credential of the document whose `secret_env` variable is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetSecret {
    pub provider: String,
    pub credential: String,
    pub var: String,
}

impl UnsetSecret {
    fn at(&self) -> String {
        format!("providers.{}.credentials.{}", self.provider, self.credential)
    }

    /// The note printed when the credential exists: its stored secret is kept.
    pub fn notice(&self) -> String {
        format!(
            "note: {}: environment variable {} (secret_env) is not set; keeping the stored secret",
            self.at(),
            self.var
        )
    }

    /// The error when the credential does not exist yet: there is nothing to keep.
    pub fn error(&self) -> anyhow::Error {
        anyhow!(
            "{}: environment variable {} (secret_env) is not set",
            self.at(),
            self.var
        )
    }
}

/// Split an affinity spec (`none`, `user`, `header:NAME`) into proto form.
pub fn affinity_from_str(s: &str) -> Option<pb::Affinity> {
    crate::cli::parse_affinity(s).ok().map(|a| pb::Affinity {
        kind: a.kind,
        header: a.header,
    })
}

/// The inverse of [`affinity_from_str`]; `None` for the default (`none`).
pub fn affinity_to_str(a: &pb::Affinity) -> Option<String> {
    match a.kind.as_str() {
        "" | "none" => None,
        "header" => Some(format!("header:{}", a.header)),
        other => Some(other.to_string()),
    }
}

impl FileModel {
    fn to_proto(&self) -> Result<pb::Model> {
        let at = format!("models.{}", self.name);
        let affinity = match &self.affinity {
            None => pb::Affinity {
                kind: "none".into(),
                header: String::new(),
            },
            Some(s) => affinity_from_str(s).ok_or_else(|| {
                anyhow!("{at}.affinity: expected `none`, `user` or `header:NAME`, got `{s}`")
            })?,
        };
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Ok(pb::Backend {
                    model: self.name.clone(),
                    name: b.name.clone().unwrap_or_else(|| b.provider.clone()),
                    provider: b.provider.clone(),
                    upstream_model: b.upstream_model.clone().unwrap_or_else(|| self.name.clone()),
                    weight: Some(b.weight.unwrap_or(defaults::WEIGHT)),
                    priority: Some(b.priority.unwrap_or(defaults::PRIORITY)),
                    enabled: Some(b.enabled.unwrap_or(true)),
                    created_at_ms: 0,
                    updated_at_ms: 0,
                    price: b
                        .price
                        .as_ref()
                        .map(|p| p.to_proto(&format!("{at}.backends[{i}].price")))
                        .transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(pb::Model {
            name: self.name.clone(),
            strategy: self
                .strategy
                .clone()
                .unwrap_or_else(|| defaults::STRATEGY.to_string()),
            retry: Some(pb::RetryPolicy {
                max_retries: Some(self.max_retries.unwrap_or(defaults::MAX_RETRIES)),
                per_try_timeout_ms: dur_ms(&format!("{at}.per_try_timeout"), &self.per_try_timeout, 0)?,
            }),
            affinity: Some(affinity),
            enabled: Some(self.enabled.unwrap_or(true)),
            description: self.description.clone().unwrap_or_default(),
            metadata: map(&self.metadata),
            backends,
            created_at_ms: 0,
            updated_at_ms: 0,
            price: self
                .price
                .as_ref()
                .map(|p| p.to_proto(&format!("{at}.price")))
                .transpose()?,
            aliases: self.aliases.clone(),
            default_max_tokens: self.default_max_tokens,
        })
    }

    fn from_proto(m: &pb::Model) -> FileModel {
        let retry = m.retry.unwrap_or_default();
        FileModel {
            name: m.name.clone(),
            description: non_empty(&m.description),
            enabled: m.enabled.filter(|e| !e),
            strategy: (m.strategy != defaults::STRATEGY).then(|| m.strategy.clone()),
            max_retries: retry.max_retries.filter(|r| *r != defaults::MAX_RETRIES),
            per_try_timeout: (retry.per_try_timeout_ms != 0).then(|| fmt_ms(retry.per_try_timeout_ms)),
            affinity: m.affinity.as_ref().and_then(affinity_to_str),
            metadata: m.metadata.clone().into_iter().collect(),
            price: m.price.as_ref().map(FilePrice::from_proto),
            aliases: m.aliases.clone(),
            default_max_tokens: m.default_max_tokens,
            backends: m
                .backends
                .iter()
                .map(|b| FileBackend {
                    provider: b.provider.clone(),
                    name: (b.name != b.provider).then(|| b.name.clone()),
                    upstream_model: (b.upstream_model != m.name).then(|| b.upstream_model.clone()),
                    weight: b.weight.filter(|w| *w != defaults::WEIGHT),
                    priority: b.priority.filter(|p| *p != defaults::PRIORITY),
                    enabled: b.enabled.filter(|e| !e),
                    price: b.price.as_ref().map(FilePrice::from_proto),
                })
                .collect(),
        }
    }
}

impl FileKey {
    fn to_proto(&self) -> Result<pb::ApiKey> {
        let at = format!("keys.{}", self.name);
        let expires_at_ms = match &self.expires {
            None => 0,
            Some(v) => {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Datetime(d) => d.to_string(),
                    other => bail!("{at}.expires: expected an RFC 3339 time, got {other}"),
                };
                if humantime::parse_duration(&s).is_ok() {
                    bail!(
                        "{at}.expires: `{s}` is relative; a declarative file needs an absolute time \
                         (e.g. \"2027-01-01T00:00:00Z\") so that re-applying it changes nothing"
                    );
                }
                let t = humantime::parse_rfc3339_weak(&s)
                    .map_err(|e| anyhow!("{at}.expires: invalid RFC 3339 time `{s}`: {e}"))?;
                system_time_ms(t)
            }
        };
        Ok(pb::ApiKey {
            name: self.name.clone(),
            allowed_models: self.models.clone(),
            expires_at_ms,
            description: self.description.clone().unwrap_or_default(),
            enabled: Some(self.enabled.unwrap_or(true)),
            revoked: self.revoked.unwrap_or(false),
            allow_pin: self.allow_pin.unwrap_or(false),
            team: self.team.clone().unwrap_or_default(),
            ..Default::default()
        })
    }

    fn from_proto(k: &pb::ApiKey) -> FileKey {
        FileKey {
            name: k.name.clone(),
            models: k.allowed_models.clone(),
            expires: (k.expires_at_ms > 0).then(|| toml::Value::String(fmt_time_ms(k.expires_at_ms))),
            description: non_empty(&k.description),
            enabled: k.enabled.filter(|e| !e),
            revoked: k.revoked.then_some(true),
            allow_pin: k.allow_pin.then_some(true),
            team: non_empty(&k.team),
        }
    }
}

impl FileLimit {
    fn to_proto(&self) -> Result<pb::Limit> {
        let at = format!("limits.{}", self.name);
        let text = match &self.amount {
            toml::Value::Integer(i) if *i > 0 => i.to_string(),
            toml::Value::Float(f) if f.is_finite() && *f > 0.0 && self.kind == "spend" => format!("{f}"),
            toml::Value::String(s) if self.kind == "spend" => s.clone(),
            other => bail!("{at}.amount: expected a positive whole number, got {other}"),
        };
        let amount = if self.kind == "spend" {
            crate::limits::parse_money(&text).ok_or_else(|| {
                anyhow!("{at}.amount: `{text}` is not an amount of money with at most 9 decimals (e.g. 25 or \"0.50\")")
            })?
        } else {
            text.parse::<u64>()
                .map_err(|_| anyhow!("{at}.amount: `{text}` is not a whole number"))?
        };
        Ok(pb::Limit {
            name: self.name.clone(),
            scope: self.scope.clone(),
            kind: self.kind.clone(),
            window: self.window.clone().unwrap_or_default(),
            amount,
            mode: self.mode.clone().unwrap_or_else(|| "enforce".into()),
            on_outage: self.on_outage.clone().unwrap_or_else(|| "closed".into()),
            description: self.description.clone().unwrap_or_default(),
            ..Default::default()
        })
    }

    fn from_proto(l: &pb::Limit) -> FileLimit {
        let amount = if l.kind == "spend" {
            let (int, frac) = (l.amount / 1_000_000_000, l.amount % 1_000_000_000);
            if frac == 0 {
                toml::Value::Integer(i64::try_from(int).unwrap_or(i64::MAX))
            } else {
                // A string: exact to the nano-unit, where a float might not be.
                toml::Value::String(format!("{int}.{}", format!("{frac:09}").trim_end_matches('0')))
            }
        } else {
            toml::Value::Integer(i64::try_from(l.amount).unwrap_or(i64::MAX))
        };
        FileLimit {
            name: l.name.clone(),
            scope: l.scope.clone(),
            kind: l.kind.clone(),
            window: non_empty(&l.window),
            amount,
            mode: Some(l.mode.clone()).filter(|m| !m.is_empty() && m != "enforce"),
            on_outage: Some(l.on_outage.clone()).filter(|o| !o.is_empty() && o != "closed"),
            description: non_empty(&l.description),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Milliseconds as a duration string in the largest unit that holds it exactly: `2m`,
/// `90s`, `1500ms`, `1h`. One number and one unit, the forms README lists, and what
/// [`dur_ms`] (humantime) reads back to the same value (humantime's own formatter writes
/// `1m 30s`, which parses too but is a form nobody types).
pub fn fmt_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")];
    if ms == 0 {
        return "0s".to_string();
    }
    let (size, unit) = UNITS
        .iter()
        .copied()
        .find(|(size, _)| ms.is_multiple_of(*size))
        .unwrap_or((1, "ms"));
    format!("{}{unit}", ms / size)
}

/// Epoch milliseconds as RFC 3339 (seconds precision unless there are millis).
pub fn fmt_time_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

pub fn system_time_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env() -> SecretEnv<'static> {
        SecretEnv {
            base_dir: None,
            getenv: &no_env,
        }
    }

    const SAMPLE: &str = r#"
[[providers]]
name = "jb"
kind = "openai"
base_url = "https://api.jetbrains.ai/v1"
timeout = "90s"
credential_strategy = "random"
auth = { header = "grazie-authenticate-jwt", prefix = "" }
headers = { "x-client" = "switchyard" }
health = { interval = "15s", probe = "chat:gpt-4o-mini" }
allow_paths = ["/v1/files", "/v1/fine_tuning/*"]
forward_headers = ["openai-organization"]

[[providers.credentials]]
name = "jwt-1"
secret = "inline-secret-value-0001"
weight = 2

[[providers.credentials]]
name = "jwt-2"
enabled = false

[[models]]
name = "gpt-4o"
strategy = "least_connections"
max_retries = 3
per_try_timeout = "30s"
affinity = "header:x-session-id"
aliases = ["gpt-4o-latest", "gpt-4o-2024-*"]
default_max_tokens = 8192

[[models.backends]]
provider = "jb"
upstream_model = "gpt-4o-2024-08-06"
weight = 3
priority = 1

[[keys]]
name = "team-a"
models = ["gpt-4o"]
expires = 2027-01-01T00:00:00Z
allow_pin = true
"#;

    #[test]
    fn parse_fill_defaults_and_round_trip() {
        let file = parse(SAMPLE, "t.toml").unwrap();
        let doc = file.into_proto(&env()).unwrap();
        let p = &doc.providers[0];
        assert_eq!(p.request_timeout_ms, 90_000);
        assert_eq!(p.connect_timeout_ms, defaults::CONNECT_TIMEOUT_MS);
        assert_eq!(p.health.as_ref().unwrap().interval_ms, 15_000);
        assert_eq!(p.health.as_ref().unwrap().enabled, Some(true));
        assert_eq!(p.credentials[0].weight, Some(2));
        assert_eq!(p.credentials[1].secret, "");
        let m = &doc.models[0];
        assert_eq!(m.backends[0].name, "jb");
        assert_eq!(m.affinity.as_ref().unwrap().header, "x-session-id");
        assert_eq!(m.aliases, ["gpt-4o-latest", "gpt-4o-2024-*"]);
        assert_eq!(m.default_max_tokens, Some(8192));
        assert_eq!(doc.keys[0].expires_at_ms, 1_798_761_600_000);
        assert_eq!(p.allow_paths, ["/v1/files", "/v1/fine_tuning/*"]);
        assert_eq!(p.forward_headers, ["openai-organization"]);
        assert!(doc.keys[0].allow_pin);

        // proto -> file -> TOML -> file -> proto is the identity on the proto (secrets aside).
        let back = FileDoc::from_proto(&doc, true);
        let text = back.to_toml("# header\n").unwrap();
        let reparsed = parse(&text, "export").unwrap();
        assert_eq!(reparsed.into_proto(&env()).unwrap(), doc);
        assert!(text.contains("allow_paths = ["), "{text}");
        assert!(text.contains("allow_pin = true"), "{text}");
        // Defaults are omitted from the export.
        assert!(!text.contains("connect_timeout"), "{text}");
        assert!(!text.contains("healthy_below"), "{text}");
    }

    #[test]
    fn egress_fields_round_trip_and_the_proxy_password_comes_from_the_env() {
        let text =
            "[[providers]]\nname = \"v\"\nkind = \"openai\"\nbase_url = \"https://vllm.internal/v1\"\n\
                    proxy = \"http://egress@proxy.corp:3128\"\nproxy_password_env = \"SY_PROXY_PW\"\n\
                    ca_file = \"/etc/ssl/private-ca.pem\"\nclient_cert_file = \"/etc/sy/c.pem\"\n\
                    client_key_file = \"/etc/sy/c-key.pem\"\n";
        let getenv = |k: &str| (k == "SY_PROXY_PW").then(|| "pw-from-env".to_string());
        let doc = parse(text, "t")
            .unwrap()
            .into_proto(&SecretEnv {
                base_dir: None,
                getenv: &getenv,
            })
            .unwrap();
        let p = &doc.providers[0];
        assert_eq!(p.proxy, "http://egress@proxy.corp:3128");
        assert_eq!(p.proxy_password, "pw-from-env");
        assert_eq!(p.ca_file, "/etc/ssl/private-ca.pem");
        assert_eq!(
            (p.client_cert_file.as_str(), p.client_key_file.as_str()),
            ("/etc/sy/c.pem", "/etc/sy/c-key.pem")
        );
        // Unset: empty, so control keeps the stored password.
        let doc2 = parse(text, "t").unwrap().into_proto(&env()).unwrap();
        assert_eq!(doc2.providers[0].proxy_password, "");
        // Exported even with secrets: the files and proxy, never the password.
        let out = FileDoc::from_proto(&doc, true).to_toml("").unwrap();
        assert!(out.contains("proxy = \"http://egress@proxy.corp:3128\""), "{out}");
        assert!(out.contains("ca_file = "), "{out}");
        assert!(!out.contains("pw-from-env"), "{out}");
    }

    #[test]
    fn redacted_export_omits_secrets() {
        let doc = parse(SAMPLE, "t").unwrap().into_proto(&env()).unwrap();
        let text = FileDoc::from_proto(&doc, false).to_toml("").unwrap();
        assert!(!text.contains("inline-secret-value-0001"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_file_and_key() {
        let err = parse("[[models]]\nname = \"m\"\nstrategyy = \"x\"\n", "conf.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("conf.toml:"), "{msg}");
        assert!(msg.contains("strategyy"), "{msg}");
    }

    #[test]
    fn bad_duration_names_the_path() {
        let file = parse(
            "[[providers]]\nname=\"p\"\nkind=\"openai\"\nbase_url=\"http://x\"\n[providers.health]\ninterval=\"often\"\n",
            "f",
        )
        .unwrap();
        let msg = file.into_proto(&env()).unwrap_err().to_string();
        assert!(
            msg.starts_with("providers.p.health.interval: invalid duration `often`"),
            "{msg}"
        );
    }

    #[test]
    fn secret_env_is_resolved_and_missing_env_is_named() {
        let text = "[[providers]]\nname=\"p\"\nkind=\"openai\"\nbase_url=\"http://x\"\n\
                    [[providers.credentials]]\nname=\"k1\"\nsecret_env=\"SY_TEST_K1\"\n";
        let file = parse(text, "f").unwrap();
        // Unset: sent empty (keep the stored secret), and listed for the caller to check.
        let doc = file.into_proto(&env()).unwrap();
        assert_eq!(doc.providers[0].credentials[0].secret, "");
        let unset = file.unset_secrets(&env());
        assert_eq!(unset.len(), 1);
        assert_eq!(
            unset[0].error().to_string(),
            "providers.p.credentials.k1: environment variable SY_TEST_K1 (secret_env) is not set"
        );
        assert!(unset[0].notice().contains("keeping the stored secret"));
        let getenv = |k: &str| (k == "SY_TEST_K1").then(|| "s3cr3t".to_string());
        let doc = file
            .into_proto(&SecretEnv {
                base_dir: None,
                getenv: &getenv,
            })
            .unwrap();
        assert_eq!(doc.providers[0].credentials[0].secret, "s3cr3t");
        let set = SecretEnv {
            base_dir: None,
            getenv: &getenv,
        };
        assert!(file.unset_secrets(&set).is_empty());
    }

    #[test]
    fn secret_file_is_relative_to_the_document() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.txt"), "from-file\n").unwrap();
        let text = "[[providers]]\nname=\"p\"\nkind=\"openai\"\nbase_url=\"http://x\"\n\
                    [[providers.credentials]]\nname=\"k1\"\nsecret_file=\"k.txt\"\n";
        let doc = parse(text, "f")
            .unwrap()
            .into_proto(&SecretEnv {
                base_dir: Some(dir.path()),
                getenv: &no_env,
            })
            .unwrap();
        assert_eq!(doc.providers[0].credentials[0].secret, "from-file");
    }

    #[test]
    fn two_secret_sources_are_rejected() {
        let text = "[[providers]]\nname=\"p\"\nkind=\"openai\"\nbase_url=\"http://x\"\n\
                    [[providers.credentials]]\nname=\"k1\"\nsecret_env=\"A\"\nsecret=\"b\"\n";
        let msg = parse(text, "f")
            .unwrap()
            .into_proto(&env())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("only one of"), "{msg}");
    }

    #[test]
    fn relative_key_expiry_is_rejected() {
        let msg = parse("[[keys]]\nname=\"a\"\nexpires=\"30d\"\n", "f")
            .unwrap()
            .into_proto(&env())
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("keys.a.expires: `30d` is relative"), "{msg}");
    }

    #[test]
    fn durations_export_in_one_unit_and_read_back() {
        for (ms, text) in [
            (0, "0s"),
            (250, "250ms"),
            (1_500, "1500ms"),
            (30_000, "30s"),
            (90_000, "90s"),
            (120_000, "2m"),
            (5_400_000, "90m"),
            (7_200_000, "2h"),
            (86_400_000, "24h"),
        ] {
            assert_eq!(fmt_ms(ms), text);
            assert_eq!(dur_ms("t", &Some(fmt_ms(ms)), 1).unwrap(), ms, "{text}");
        }
        // Any value round-trips, not only round ones.
        for ms in [1, 999, 1_001, 61_001, 3_599_999, 3_600_001] {
            assert_eq!(dur_ms("t", &Some(fmt_ms(ms)), 7).unwrap(), ms);
            assert!(!fmt_ms(ms).contains(' '));
        }
    }

    #[test]
    fn anthropic_default_probe_is_omitted_on_export() {
        let text = "[[providers]]\nname=\"c\"\nkind=\"anthropic\"\nbase_url=\"https://api.anthropic.com\"\n";
        let doc = parse(text, "f").unwrap().into_proto(&env()).unwrap();
        assert_eq!(
            doc.providers[0].health.as_ref().unwrap().probe,
            "messages:claude-3-5-haiku-latest"
        );
        let out = FileDoc::from_proto(&doc, false).to_toml("").unwrap();
        assert!(!out.contains("probe"), "{out}");
    }

    #[test]
    fn limits_read_fill_defaults_and_round_trip() {
        let text = r#"
[[keys]]
name = "alice"
team = "research"

[[limits]]
name = "research-budget"
scope = "team:research"
kind = "spend"
window = "month"
amount = "25.50"

[[limits]]
name = "alice-rpm"
scope = "key:alice"
kind = "requests"
window = "minute"
amount = 100
mode = "observe"
on_outage = "open"

[[limits]]
name = "alice-conc"
scope = "key:alice"
kind = "concurrency"
amount = 4
"#;
        let doc = parse(text, "f").unwrap().into_proto(&env()).unwrap();
        assert_eq!(doc.keys[0].team, "research");
        let l = &doc.limits;
        assert_eq!(
            (l[0].amount, l[0].mode.as_str(), l[0].on_outage.as_str()),
            (25_500_000_000, "enforce", "closed")
        );
        assert_eq!(
            (l[1].amount, l[1].mode.as_str(), l[1].on_outage.as_str()),
            (100, "observe", "open")
        );
        assert_eq!((l[2].window.as_str(), l[2].amount), ("", 4));
        let back = FileDoc::from_proto(&doc, false);
        assert_eq!(back.limits[0].amount, toml::Value::String("25.5".into()));
        assert_eq!(back.limits[0].mode, None, "defaults are omitted");
        let again = parse(&back.to_toml("").unwrap(), "f")
            .unwrap()
            .into_proto(&env())
            .unwrap();
        assert_eq!(again, doc);
        let err = parse(
            "[[limits]]\nname=\"x\"\nscope=\"key:a\"\nkind=\"requests\"\nwindow=\"day\"\namount=1.5\n",
            "f",
        )
        .unwrap()
        .into_proto(&env())
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("limits.x.amount:"), "{err}");
    }
}
