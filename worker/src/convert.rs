//! Proto `Snapshot` → validated `Routing`. The only worker module that knows protobuf
//! types. All fallible work happens here, before the swap; errors name the object path
//! (`models.gpt-4o.backends[1].provider`) so that a Nack tells the operator what to fix.
use std::{
    collections::{HashMap, HashSet},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use switchyard_proto as pb;

use crate::{
    balance::{stable_hash, BreakerConfig, Endpoint, EndpointState, Selector, Strategy},
    config::{
        Affinity, Backend, ClientKey, Credential, HealthProbe, Model, ModelRoute, ProbeKind, Provider,
        ProviderKind, Routing,
    },
    metrics::{BackendHandles, ModelHandles},
    upstream::Connector,
};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct ConvertError {
    pub path: String,
    pub msg: String,
}

fn err(path: impl Into<String>, msg: impl Into<String>) -> ConvertError {
    ConvertError {
        path: path.into(),
        msg: msg.into(),
    }
}

fn ms_or(v: u64, default_ms: u64) -> Duration {
    Duration::from_millis(if v == 0 { default_ms } else { v })
}

fn ident_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

/// Build the routing table. `prev` states (by identity) are reused for unchanged
/// backends and credentials, so health and load survive a swap.
pub fn build(
    snap: &pb::Snapshot,
    prev: &HashMap<String, Arc<EndpointState>>,
    connector: &Connector,
    breaker: BreakerConfig,
) -> Result<Routing, ConvertError> {
    let state_for = |identity: &str| {
        prev.get(identity)
            .cloned()
            .unwrap_or_else(|| EndpointState::new(breaker))
    };
    let mut providers = Vec::with_capacity(snap.providers.len());
    let mut provider_idx = HashMap::new();
    for p in &snap.providers {
        let path = format!("providers.{}", p.name);
        if p.name.is_empty() {
            return Err(err("providers[]", "empty name"));
        }
        let kind = match p.kind.as_str() {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            other => return Err(err(format!("{path}.kind"), format!("unknown kind `{other}`"))),
        };
        let url = url::Url::parse(&p.base_url)
            .map_err(|e| err(format!("{path}.base_url"), format!("{e}: `{}`", p.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(err(
                format!("{path}.base_url"),
                "must be an http(s) URL with a host",
            ));
        }
        let base_url = p.base_url.trim_end_matches('/').to_string();
        let auth = p.auth.clone().unwrap_or_default();
        let (def_header, def_prefix) = match kind {
            ProviderKind::OpenAi => ("authorization", "Bearer "),
            ProviderKind::Anthropic => ("x-api-key", ""),
        };
        let header_name = if auth.header.is_empty() {
            def_header
        } else {
            auth.header.as_str()
        };
        let prefix = if auth.header.is_empty() && auth.prefix.is_empty() {
            def_prefix
        } else {
            auth.prefix.as_str()
        };
        let auth_header = HeaderName::from_bytes(header_name.to_ascii_lowercase().as_bytes())
            .map_err(|_| err(format!("{path}.auth.header"), "invalid header name"))?;
        let mut static_headers = Vec::new();
        let mut hs: Vec<_> = p.headers.iter().collect();
        hs.sort();
        for (k, v) in hs {
            let n = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| err(format!("{path}.headers.{k}"), "invalid header name"))?;
            let v = HeaderValue::from_str(v)
                .map_err(|_| err(format!("{path}.headers.{k}"), "invalid header value"))?;
            static_headers.push((n, v));
        }
        let connect_timeout = ms_or(p.connect_timeout_ms, 5_000);
        let health = match &p.health {
            Some(h) if h.enabled == Some(false) => None,
            h => {
                let h = h.clone().unwrap_or_default();
                let probe = if h.probe.is_empty() {
                    match kind {
                        ProviderKind::OpenAi => ProbeKind::Models,
                        ProviderKind::Anthropic => ProbeKind::Messages("claude-3-5-haiku-latest".into()),
                    }
                } else if h.probe == "models" {
                    ProbeKind::Models
                } else if let Some(m) = h.probe.strip_prefix("chat:") {
                    ProbeKind::Chat(m.to_string())
                } else if let Some(m) = h.probe.strip_prefix("messages:") {
                    ProbeKind::Messages(m.to_string())
                } else {
                    return Err(err(
                        format!("{path}.health.probe"),
                        format!("unknown probe `{}`", h.probe),
                    ));
                };
                Some(HealthProbe {
                    interval: ms_or(h.interval_ms, 30_000),
                    timeout: ms_or(h.timeout_ms, 10_000),
                    probe,
                    healthy_below: if h.healthy_below == 0 {
                        500
                    } else {
                        h.healthy_below.min(999) as u16
                    },
                })
            }
        };
        let cred_strategy = match p.credential_strategy.as_str() {
            "" => Strategy::RoundRobin,
            s => Strategy::parse(s).ok_or_else(|| {
                err(
                    format!("{path}.credential_strategy"),
                    format!("unknown strategy `{s}`"),
                )
            })?,
        };
        let mut credentials = Vec::new();
        let mut cred_endpoints = Vec::new();
        let mut seen = HashSet::new();
        for c in &p.credentials {
            let cpath = format!("{path}.credentials.{}", c.name);
            if !seen.insert(c.name.clone()) {
                return Err(err(cpath, "duplicate credential name"));
            }
            let mut auth_value = HeaderValue::from_str(&format!("{prefix}{}", c.secret))
                .map_err(|_| err(format!("{cpath}.secret"), "secret is not a valid header value"))?;
            auth_value.set_sensitive(true);
            let identity = format!(
                "c/{}/{}/{}",
                p.name,
                c.name,
                ident_hash(&[&c.secret, &base_url, header_name, prefix])
            );
            let state = state_for(&identity);
            let weight = c.weight.unwrap_or(1);
            if weight == 0 {
                return Err(err(format!("{cpath}.weight"), "must be > 0"));
            }
            let enabled = c.enabled.unwrap_or(true);
            if enabled {
                cred_endpoints.push(Endpoint {
                    weight,
                    priority: 0,
                    id_hash: stable_hash(c.name.as_bytes()),
                    state: state.clone(),
                });
                credentials.push(Credential {
                    name: c.name.as_str().into(),
                    auth_value,
                    enabled,
                    state,
                    identity,
                });
            }
        }
        if provider_idx.insert(p.name.clone(), providers.len()).is_some() {
            return Err(err(path, "duplicate provider name"));
        }
        providers.push(Provider {
            name_header: HeaderValue::from_str(&p.name).map_err(|_| err(&path, "invalid name"))?,
            name: p.name.as_str().into(),
            kind,
            base_url,
            connect_timeout,
            request_timeout: ms_or(p.request_timeout_ms, 60_000),
            idle_timeout: ms_or(p.idle_timeout_ms, 60_000),
            total_timeout: (p.total_timeout_ms > 0).then(|| Duration::from_millis(p.total_timeout_ms)),
            auth_header,
            static_headers,
            health,
            enabled: p.enabled.unwrap_or(true),
            credentials,
            cred_endpoints,
            cred_selector: Selector::new(cred_strategy),
            client: connector
                .client(&url, connect_timeout)
                .map_err(|e| err(format!("{path}.base_url"), e))?,
            last_check_ms: AtomicU64::new(0),
        });
    }

    let mut models = FxHashMap::default();
    for m in &snap.models {
        let path = format!("models.{}", m.name);
        if m.name.is_empty() {
            return Err(err("models[]", "empty name"));
        }
        let strategy = match m.strategy.as_str() {
            "" => Strategy::RoundRobin,
            s => Strategy::parse(s)
                .ok_or_else(|| err(format!("{path}.strategy"), format!("unknown strategy `{s}`")))?,
        };
        let retry = m.retry.unwrap_or_default();
        let affinity = match m.affinity.as_ref().map(|a| (a.kind.as_str(), a.header.as_str())) {
            None | Some(("" | "none", _)) => Affinity::None,
            Some(("user", _)) => Affinity::User,
            Some(("header", h)) => Affinity::Header(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| err(format!("{path}.affinity.header"), "invalid header name"))?,
            ),
            Some((k, _)) => {
                return Err(err(
                    format!("{path}.affinity.kind"),
                    format!("unknown affinity `{k}`"),
                ))
            }
        };
        let mut per_kind: [Vec<(Backend, Endpoint)>; 2] = [Vec::new(), Vec::new()];
        let mut seen = HashSet::new();
        for (i, b) in m.backends.iter().enumerate() {
            let bpath = format!("{path}.backends[{i}]");
            let name = if b.name.is_empty() {
                b.provider.clone()
            } else {
                b.name.clone()
            };
            if !seen.insert(name.clone()) {
                return Err(err(bpath, format!("duplicate backend name `{name}`")));
            }
            let &pi = provider_idx.get(&b.provider).ok_or_else(|| {
                err(
                    format!("{bpath}.provider"),
                    format!("unknown provider `{}`", b.provider),
                )
            })?;
            let prov = &providers[pi];
            if b.enabled == Some(false) || !prov.enabled {
                continue;
            }
            let upstream_model = if b.upstream_model.is_empty() {
                m.name.clone()
            } else {
                b.upstream_model.clone()
            };
            let weight = b.weight.unwrap_or(1);
            if weight == 0 {
                return Err(err(format!("{bpath}.weight"), "must be > 0"));
            }
            let identity = format!(
                "b/{}/{}/{}",
                m.name,
                name,
                ident_hash(&[&b.provider, &prov.base_url, &upstream_model, prov.kind.as_str()])
            );
            let state = state_for(&identity);
            let ep = Endpoint {
                weight,
                priority: b.priority.unwrap_or(0),
                id_hash: stable_hash(name.as_bytes()),
                state: state.clone(),
            };
            let upstream_model_json =
                Bytes::from(serde_json::to_vec(&upstream_model).map_err(|e| err(&bpath, e.to_string()))?);
            per_kind[prov.kind.index()].push((
                Backend {
                    name_header: HeaderValue::from_str(&name).map_err(|_| err(&bpath, "invalid name"))?,
                    metrics: Arc::new(BackendHandles::new(&m.name, &name)),
                    name: name.into(),
                    provider: pi,
                    upstream_model,
                    upstream_model_json,
                    state,
                    identity,
                },
                ep,
            ));
        }
        let routes = per_kind.map(|v| {
            if v.is_empty() {
                None
            } else {
                let (backends, endpoints) = v.into_iter().unzip();
                Some(ModelRoute {
                    backends,
                    endpoints,
                    selector: Selector::new(strategy),
                })
            }
        });
        let model = Model {
            name: m.name.as_str().into(),
            metrics: Arc::new(ModelHandles::new(&m.name)),
            max_retries: retry.max_retries.unwrap_or(2),
            per_try_timeout: (retry.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(retry.per_try_timeout_ms)),
            affinity,
            enabled: m.enabled.unwrap_or(true),
            routes,
        };
        if models.insert(m.name.clone(), model).is_some() {
            return Err(err(path, "duplicate model name"));
        }
    }
    let mut model_names: Vec<String> = models
        .values()
        .filter(|m| m.enabled)
        .map(|m| m.name.to_string())
        .collect();
    model_names.sort();

    let mut keys = FxHashMap::default();
    for k in &snap.keys {
        let path = format!("keys.{}", k.name);
        let mut digest = [0u8; 32];
        hex::decode_to_slice(k.key_hash.trim(), &mut digest)
            .map_err(|_| err(format!("{path}.key_hash"), "must be 64 hex characters"))?;
        keys.insert(
            digest,
            ClientKey {
                id: k.id.as_str().into(),
                name: k.name.as_str().into(),
                digest,
                allowed_models: (!k.allowed_models.is_empty())
                    .then(|| k.allowed_models.iter().cloned().collect()),
                enabled: k.enabled.unwrap_or(true) && !k.revoked,
                expires_at_ms: k.expires_at_ms,
            },
        );
    }
    Ok(Routing {
        version: snap.version,
        hash: snap.hash.clone(),
        providers,
        models,
        model_names,
        keys,
    })
}
