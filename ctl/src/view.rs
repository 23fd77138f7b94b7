//! Output views: our own serializable structs (prost types don't derive `Serialize`),
//! used as the stable `-o json` schema and as the source of table rows.
//!
//! JSON field names follow the proto (`*_ms` durations, `*_at_ms` epoch milliseconds),
//! with defaults already resolved, so scripts never have to guess.

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_proto as pb;

use crate::doc::{affinity_to_str, fmt_ms, fmt_time_ms};

#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub enabled: bool,
    pub description: String,
    pub credential_strategy: String,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub total_timeout_ms: u64,
    pub auth_header: String,
    pub auth_prefix: String,
    pub headers: BTreeMap<String, String>,
    /// Paths forwarded beyond the kind's inference endpoints.
    pub allow_paths: Vec<String>,
    /// Account-selecting client headers let through.
    pub forward_headers: Vec<String>,
    /// Outbound proxy (`env` or a URL); its password only as control redacts it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub proxy_password: String,
    /// TLS files on the worker host.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ca_file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_cert_file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_key_file: String,
    pub health: HealthView,
    pub metadata: BTreeMap<String, String>,
    pub credentials: Vec<CredentialView>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct HealthView {
    pub enabled: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub probe: String,
    pub healthy_below: u32,
}

#[derive(Debug, Serialize)]
pub struct CredentialView {
    pub provider: String,
    pub name: String,
    /// As the server returns it: redacted (at most the last 4 characters).
    pub secret_redacted: String,
    pub weight: u32,
    pub enabled: bool,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// `credentials list` only: `disabled`, or the fleet's view from health reports
    /// (see [`credential_state`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// A credential's state for `credentials list`: `disabled` when the operator took it out
/// of rotation; otherwise what the workers' health reports say: `healthy` (every
/// connected worker uses it), `ejected` (none does: a confirmed 401/403, failing probes or
/// the passive breaker), `ejected on N/M workers`, or `enabled` when no worker has
/// reported on it yet.
pub fn credential_state(enabled: bool, healthy_workers: u32, total_workers: u32) -> String {
    if !enabled {
        "disabled".to_string()
    } else if total_workers == 0 {
        "enabled".to_string()
    } else if healthy_workers >= total_workers {
        "healthy".to_string()
    } else if healthy_workers == 0 {
        "ejected".to_string()
    } else {
        format!(
            "ejected on {}/{total_workers} workers",
            total_workers - healthy_workers
        )
    }
}

#[derive(Debug, Serialize)]
pub struct ModelView {
    pub name: String,
    pub strategy: String,
    pub enabled: bool,
    pub description: String,
    pub max_retries: u32,
    pub per_try_timeout_ms: u64,
    /// `none`, `user` or `header:NAME`.
    pub affinity: String,
    pub metadata: BTreeMap<String, String>,
    /// Other names the model is asked by (left out when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Left out when unset (the worker's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
    pub backends: Vec<BackendView>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub model: String,
    pub name: String,
    pub provider: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: i32,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    /// Empty = all models.
    pub allowed_models: Vec<String>,
    pub enabled: bool,
    pub revoked: bool,
    pub description: String,
    /// May pin a backend with `x-switchyard-backend`.
    pub allow_pin: bool,
    /// Empty = no team.
    pub team: String,
    pub created_at_ms: i64,
    /// 0 = never.
    pub expires_at_ms: i64,
}

/// `keys create` answer: the only time the plaintext is ever shown.
#[derive(Debug, Serialize)]
pub struct CreatedKeyView {
    pub key: KeyView,
    pub plaintext: String,
}

#[derive(Debug, Serialize)]
pub struct WorkerView {
    pub worker_id: String,
    pub connected: bool,
    pub address: String,
    pub software_version: String,
    pub applied_version: u64,
    pub applied_hash: String,
    pub in_sync: bool,
    pub last_seen_ms: i64,
    pub connected_at_ms: i64,
    pub rejected_version: u64,
    pub rejected_reason: String,
    pub rejected_at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct WorkersView {
    pub current_version: u64,
    pub workers: Vec<WorkerView>,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub control_url: String,
    pub version: u64,
    pub snapshot_hash: String,
    pub store: String,
    pub store_location: String,
    pub workers_connected: u32,
    pub workers_in_sync: u32,
    pub software_version: String,
    pub started_at_ms: i64,
    pub secrets_encrypted: bool,
    /// The gRPC listener: `plaintext`, `tls` or `mtls`.
    pub transport: String,
    /// Control was started with `--insecure`.
    pub insecure: bool,
}

#[derive(Debug, Serialize)]
pub struct ChangeView {
    pub kind: String,
    pub name: String,
    pub action: String,
    pub fields: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ApplyView {
    pub dry_run: bool,
    pub version: u64,
    pub changes: Vec<ChangeView>,
    pub created_keys: Vec<CreatedKeySecret>,
}

#[derive(Debug, Serialize)]
pub struct CreatedKeySecret {
    pub name: String,
    pub plaintext: String,
}

/// Answer of a delete: the config version after it.
#[derive(Debug, Serialize)]
pub struct DeletedView {
    pub kind: &'static str,
    pub name: String,
    pub version: u64,
}

fn sorted(m: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl From<&pb::Provider> for ProviderView {
    fn from(p: &pb::Provider) -> Self {
        let auth = p.auth.clone().unwrap_or_default();
        let h = p.health.clone().unwrap_or_default();
        ProviderView {
            name: p.name.clone(),
            kind: p.kind.clone(),
            base_url: p.base_url.clone(),
            enabled: p.enabled.unwrap_or(true),
            description: p.description.clone(),
            credential_strategy: p.credential_strategy.clone(),
            connect_timeout_ms: p.connect_timeout_ms,
            request_timeout_ms: p.request_timeout_ms,
            idle_timeout_ms: p.idle_timeout_ms,
            total_timeout_ms: p.total_timeout_ms,
            auth_header: auth.header,
            auth_prefix: auth.prefix,
            headers: sorted(&p.headers),
            allow_paths: p.allow_paths.clone(),
            forward_headers: p.forward_headers.clone(),
            proxy: p.proxy.clone(),
            proxy_password: p.proxy_password.clone(),
            ca_file: p.ca_file.clone(),
            client_cert_file: p.client_cert_file.clone(),
            client_key_file: p.client_key_file.clone(),
            health: HealthView {
                enabled: h.enabled.unwrap_or(true),
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                probe: h.probe,
                healthy_below: h.healthy_below,
            },
            metadata: sorted(&p.metadata),
            credentials: p.credentials.iter().map(CredentialView::from).collect(),
            created_at_ms: p.created_at_ms,
            updated_at_ms: p.updated_at_ms,
        }
    }
}

impl From<&pb::Credential> for CredentialView {
    fn from(c: &pb::Credential) -> Self {
        CredentialView {
            provider: c.provider.clone(),
            name: c.name.clone(),
            secret_redacted: c.secret.clone(),
            weight: c.weight.unwrap_or(1),
            enabled: c.enabled.unwrap_or(true),
            description: c.description.clone(),
            metadata: sorted(&c.metadata),
            created_at_ms: c.created_at_ms,
            updated_at_ms: c.updated_at_ms,
            state: None,
        }
    }
}

impl From<&pb::Model> for ModelView {
    fn from(m: &pb::Model) -> Self {
        let retry = m.retry.unwrap_or_default();
        ModelView {
            name: m.name.clone(),
            strategy: m.strategy.clone(),
            enabled: m.enabled.unwrap_or(true),
            description: m.description.clone(),
            max_retries: retry.max_retries.unwrap_or(2),
            per_try_timeout_ms: retry.per_try_timeout_ms,
            affinity: m
                .affinity
                .as_ref()
                .and_then(affinity_to_str)
                .unwrap_or_else(|| "none".to_string()),
            metadata: sorted(&m.metadata),
            aliases: m.aliases.clone(),
            default_max_tokens: m.default_max_tokens,
            backends: m.backends.iter().map(BackendView::from).collect(),
            created_at_ms: m.created_at_ms,
            updated_at_ms: m.updated_at_ms,
        }
    }
}

impl From<&pb::Backend> for BackendView {
    fn from(b: &pb::Backend) -> Self {
        BackendView {
            model: b.model.clone(),
            name: b.name.clone(),
            provider: b.provider.clone(),
            upstream_model: b.upstream_model.clone(),
            weight: b.weight.unwrap_or(1),
            priority: b.priority.unwrap_or(0),
            enabled: b.enabled.unwrap_or(true),
            created_at_ms: b.created_at_ms,
            updated_at_ms: b.updated_at_ms,
        }
    }
}

impl From<&pb::ApiKey> for KeyView {
    fn from(k: &pb::ApiKey) -> Self {
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            allowed_models: k.allowed_models.clone(),
            enabled: k.enabled.unwrap_or(true) && !k.revoked,
            revoked: k.revoked,
            description: k.description.clone(),
            allow_pin: k.allow_pin,
            team: k.team.clone(),
            created_at_ms: k.created_at_ms,
            expires_at_ms: k.expires_at_ms,
        }
    }
}

impl WorkerView {
    pub fn new(w: &pb::WorkerInfo, current_version: u64) -> Self {
        WorkerView {
            worker_id: w.worker_id.clone(),
            connected: w.connected,
            address: w.address.clone(),
            software_version: w.software_version.clone(),
            applied_version: w.applied_version,
            applied_hash: w.applied_hash.clone(),
            in_sync: w.connected && w.applied_version == current_version,
            last_seen_ms: w.last_seen_ms,
            connected_at_ms: w.connected_at_ms,
            rejected_version: w.rejected_version,
            rejected_reason: w.rejected_reason.clone(),
            rejected_at_ms: w.rejected_at_ms,
        }
    }
}

// ---------------------------------------------------------------------------
// table cells
// ---------------------------------------------------------------------------

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

pub fn time_cell(ms: i64) -> String {
    if ms <= 0 {
        "-".to_string()
    } else {
        fmt_time_ms(ms)
    }
}

pub fn dur_cell(ms: u64) -> String {
    if ms == 0 {
        "-".to_string()
    } else {
        fmt_ms(ms)
    }
}

pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

pub fn key_status(k: &KeyView, now_ms: i64) -> &'static str {
    if k.revoked {
        "revoked"
    } else if k.expires_at_ms > 0 && k.expires_at_ms <= now_ms {
        "expired"
    } else if !k.enabled {
        "disabled"
    } else {
        "active"
    }
}

pub fn map_cell(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        "-".to_string()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One line per change: `+ provider openai`, `~ model gpt-4o (strategy)`, `- backend m/b`.
pub fn change_line(c: &pb::Change) -> String {
    let sign = match c.action.as_str() {
        "create" => "+",
        "delete" => "-",
        "update" => "~",
        _ => "?",
    };
    if c.fields.is_empty() {
        format!("{sign} {} {}", c.kind, c.name)
    } else {
        format!("{sign} {} {} ({})", c.kind, c.name, c.fields.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_lines() {
        let c = |action: &str, fields: &[&str]| pb::Change {
            kind: "model".into(),
            name: "gpt-4o".into(),
            action: action.into(),
            fields: fields.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(change_line(&c("create", &[])), "+ model gpt-4o");
        assert_eq!(
            change_line(&c("update", &["strategy", "retry.max_retries"])),
            "~ model gpt-4o (strategy, retry.max_retries)"
        );
        assert_eq!(change_line(&c("delete", &[])), "- model gpt-4o");
    }

    #[test]
    fn key_status_order() {
        let mut k = KeyView::from(&pb::ApiKey {
            name: "a".into(),
            expires_at_ms: 100,
            ..Default::default()
        });
        assert_eq!(key_status(&k, 50), "active");
        assert_eq!(key_status(&k, 100), "expired");
        k.revoked = true;
        assert_eq!(key_status(&k, 50), "revoked");
    }

    #[test]
    fn json_of_a_provider_has_resolved_defaults() {
        let v = ProviderView::from(&pb::Provider {
            name: "p".into(),
            ..Default::default()
        });
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["enabled"], true);
        assert_eq!(j["health"]["enabled"], true);
        assert!(j["credentials"].as_array().unwrap().is_empty());
    }

    #[test]
    fn credential_state_words() {
        assert_eq!(credential_state(false, 3, 3), "disabled");
        assert_eq!(credential_state(true, 0, 0), "enabled");
        assert_eq!(credential_state(true, 3, 3), "healthy");
        assert_eq!(credential_state(true, 0, 3), "ejected");
        assert_eq!(credential_state(true, 2, 3), "ejected on 1/3 workers");
    }
}
