//! Proto `Snapshot` → validated `Routing`. The only worker module that knows protobuf
//! types. All fallible work happens here, before the swap; errors name the object path
//! (`models.gpt-4o.backends[1].provider`) so that a Nack tells the operator what to fix.
use std::{
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use rustc_hash::{FxHashMap, FxHashSet};
use sha2::{Digest, Sha256};
use switchyard_proto as pb;

use crate::{
    balance::{stable_hash, BreakerConfig, Endpoint, EndpointState, Selector, Strategy},
    config::{
        Affinity, Aliases, Backend, ClientKey, Credential, HealthProbe, Model, ModelRoute, ProbeKind,
        Provider, ProviderKind, Routing, States,
    },
    limits::{Kind, LimitDef, LimitSet, LimitState, Mode, Outage, Scope},
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

/// A snapshot price with its fallbacks applied (cached input and cache write cost the
/// input price unless set, reasoning the output price). Control requires `input` and
/// `output`; a snapshot without them is refused here too, rather than priced at zero.
fn price(path: &str, p: &pb::Price) -> Result<crate::account::Price, ConvertError> {
    let input = p
        .input
        .ok_or_else(|| err(format!("{path}.input"), "is required"))?;
    let output = p
        .output
        .ok_or_else(|| err(format!("{path}.output"), "is required"))?;
    Ok(crate::account::Price {
        input,
        cached_input: p.cached_input.unwrap_or(input),
        cache_write: p.cache_write.unwrap_or(input),
        output,
        reasoning: p.reasoning.unwrap_or(output),
    })
}

fn ms_or(v: u64, default_ms: u64) -> Duration {
    Duration::from_millis(if v == 0 { default_ms } else { v })
}

/// `<tag>/<owner>/<name>/<hash of what makes it the same endpoint>`: the key that carries
/// an endpoint's live state into the next routing table (a secret is only ever hashed).
/// Built in one allocation: at 5,000 backends the apply is mostly such small work.
fn identity(tag: &str, owner: &str, name: &str, parts: &[&str]) -> Arc<str> {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let mut hex = [0u8; 24];
    // 12 bytes give 24 hex digits, exactly the buffer: cannot fail.
    let _ = hex::encode_to_slice(&h.finalize()[..12], &mut hex);
    let mut id = String::with_capacity(tag.len() + owner.len() + name.len() + 3 + hex.len());
    for piece in [tag, "/", owner, "/", name, "/"] {
        id.push_str(piece);
    }
    id.extend(hex.iter().map(|&b| char::from(b)));
    Arc::from(id)
}

/// A provider's `allow_paths` and `forward_headers`, checked by the same rules as the
/// control plane's (a snapshot is validated again here, whoever wrote it).
fn passthrough(
    path: &str,
    p: &pb::Provider,
    auth_header: &HeaderName,
) -> Result<(Vec<String>, Vec<HeaderName>), ConvertError> {
    use switchyard_common::passthrough::{check_api_path, check_forward_header, MAX_ENTRIES};
    if p.allow_paths.len() > MAX_ENTRIES {
        return Err(err(
            format!("{path}.allow_paths"),
            format!("at most {MAX_ENTRIES} entries"),
        ));
    }
    if p.forward_headers.len() > MAX_ENTRIES {
        return Err(err(
            format!("{path}.forward_headers"),
            format!("at most {MAX_ENTRIES} entries"),
        ));
    }
    for (i, ap) in p.allow_paths.iter().enumerate() {
        check_api_path(ap).map_err(|e| err(format!("{path}.allow_paths[{i}]"), e))?;
    }
    let mut headers = Vec::with_capacity(p.forward_headers.len());
    for (i, h) in p.forward_headers.iter().enumerate() {
        let hpath = || format!("{path}.forward_headers[{i}]");
        let lower = h.to_ascii_lowercase();
        check_forward_header(&lower).map_err(|e| err(hpath(), e))?;
        let name =
            HeaderName::from_bytes(lower.as_bytes()).map_err(|_| err(hpath(), "invalid header name"))?;
        if name == *auth_header {
            return Err(err(
                hpath(),
                "the provider's credential header cannot be forwarded",
            ));
        }
        if !headers.contains(&name) {
            headers.push(name);
        }
    }
    Ok((p.allow_paths.clone(), headers))
}

/// The route a client dialect takes: the backends of its own kind (`native`), then those
/// of the other kind (`other`), reached by translation (issue 17). Within a tier the
/// native ones go first: each tier `p` becomes `2p` for them and `2p + 1` for the
/// others, so a translated backend serves a dialect only when no native backend of its
/// tier is available (translation costs CPU and keeps only what both dialects have).
/// A route without backends of the other kind keeps its priorities as they are.
/// Takes both lists by value: the caller clones each backend once, for the route in which
/// it is the other kind's.
fn route_for(
    native: Vec<(Backend, Endpoint)>,
    other: Vec<(Backend, Endpoint)>,
    strategy: Strategy,
) -> Option<ModelRoute> {
    if native.is_empty() && other.is_empty() {
        return None;
    }
    let mixed = !other.is_empty();
    let n = native.len();
    let (mut backends, mut endpoints) = (
        Vec::with_capacity(n + other.len()),
        Vec::with_capacity(n + other.len()),
    );
    for (own, list) in [(true, native), (false, other)] {
        for (b, mut e) in list {
            if mixed {
                e.priority = e.priority.saturating_mul(2).saturating_add(i32::from(!own));
            }
            backends.push(b);
            endpoints.push(e);
        }
    }
    Some(ModelRoute {
        native: n,
        backends,
        endpoints,
        selector: Selector::new(strategy),
    })
}

/// Build the routing table. `prev` states (by identity) are reused for unchanged
/// backends and credentials, so health and load survive a swap.
pub fn build(
    snap: &pb::Snapshot,
    prev: &States,
    connector: &Connector,
    breaker: BreakerConfig,
) -> Result<Routing, ConvertError> {
    let limits = limits(snap, prev)?;
    let state_for = |identity: &str| {
        prev.endpoints
            .get(identity)
            .cloned()
            .unwrap_or_else(|| EndpointState::new(breaker))
    };
    let mut providers = Vec::with_capacity(snap.providers.len());
    let mut provider_idx: FxHashMap<&str, usize> = FxHashMap::default();
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
        let (extra_paths, forward_headers) = passthrough(&path, p, &auth_header)?;
        let mut credentials = Vec::new();
        let mut cred_endpoints = Vec::new();
        let mut seen = FxHashSet::default();
        for c in &p.credentials {
            let cpath = format!("{path}.credentials.{}", c.name);
            if !seen.insert(c.name.as_str()) {
                return Err(err(cpath, "duplicate credential name"));
            }
            let mut auth_value = HeaderValue::from_str(&format!("{prefix}{}", c.secret))
                .map_err(|_| err(format!("{cpath}.secret"), "secret is not a valid header value"))?;
            auth_value.set_sensitive(true);
            let identity = identity(
                "c",
                &p.name,
                &c.name,
                &[&c.secret, &base_url, header_name, prefix],
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
                    limits: limits.credential(&p.name, &c.name),
                    name: c.name.as_str().into(),
                    id_key: crate::respid::IdKey::new(&p.name, &c.name, c.secret.as_bytes()),
                    auth_value,
                    enabled,
                    state,
                    identity,
                });
            }
        }
        if provider_idx.insert(p.name.as_str(), providers.len()).is_some() {
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
            extra_paths,
            forward_headers,
            health,
            enabled: p.enabled.unwrap_or(true),
            credentials,
            cred_endpoints,
            // Credential weights are always honoured (`round_robin` → smooth WRR).
            cred_selector: Selector::new(cred_strategy.for_credentials()),
            client: connector
                .client(&url, connect_timeout, &egress(p, &url, &path)?)
                .map_err(|e| err(format!("{path}.base_url"), e))?,
            last_check_ms: AtomicU64::new(0),
        });
    }

    let mut models = FxHashMap::with_capacity_and_hasher(snap.models.len(), Default::default());
    for m in &snap.models {
        // Paths are formatted only for an error: most of a large apply is per-backend work.
        let path = || format!("models.{}", m.name);
        if m.name.is_empty() {
            return Err(err("models[]", "empty name"));
        }
        let strategy = match m.strategy.as_str() {
            "" => Strategy::RoundRobin,
            s => Strategy::parse(s)
                .ok_or_else(|| err(format!("{}.strategy", path()), format!("unknown strategy `{s}`")))?,
        };
        let retry = m.retry.unwrap_or_default();
        let affinity = match m.affinity.as_ref().map(|a| (a.kind.as_str(), a.header.as_str())) {
            None | Some(("" | "none", _)) => Affinity::None,
            Some(("user", _)) => Affinity::User,
            Some(("header", h)) => Affinity::Header(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| err(format!("{}.affinity.header", path()), "invalid header name"))?,
            ),
            Some((k, _)) => {
                return Err(err(
                    format!("{}.affinity.kind", path()),
                    format!("unknown affinity `{k}`"),
                ))
            }
        };
        let model_name: Arc<str> = m.name.as_str().into();
        let mut per_kind: [Vec<(Backend, Endpoint)>; 2] = [Vec::new(), Vec::new()];
        let mut seen = FxHashSet::default();
        for (i, b) in m.backends.iter().enumerate() {
            let bpath = || format!("{}.backends[{i}]", path());
            let name = if b.name.is_empty() {
                b.provider.as_str()
            } else {
                b.name.as_str()
            };
            if !seen.insert(name) {
                return Err(err(bpath(), format!("duplicate backend name `{name}`")));
            }
            let &pi = provider_idx.get(b.provider.as_str()).ok_or_else(|| {
                err(
                    format!("{}.provider", bpath()),
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
                return Err(err(format!("{}.weight", bpath()), "must be > 0"));
            }
            let identity = identity(
                "b",
                &m.name,
                name,
                &[&b.provider, &prov.base_url, &upstream_model, prov.kind.as_str()],
            );
            let state = state_for(&identity);
            let ep = Endpoint {
                weight,
                priority: b.priority.unwrap_or(0),
                id_hash: stable_hash(name.as_bytes()),
                state: state.clone(),
            };
            let price = match b.price.as_ref().or(m.price.as_ref()) {
                None => None,
                Some(p) => {
                    let ppath = if b.price.is_some() {
                        format!("{}.price", bpath())
                    } else {
                        format!("{}.price", path())
                    };
                    Some(price(&ppath, p)?)
                }
            };
            let upstream_model_json =
                Bytes::from(serde_json::to_vec(&upstream_model).map_err(|e| err(bpath(), e.to_string()))?);
            let name: Arc<str> = name.into();
            per_kind[prov.kind.index()].push((
                Backend {
                    name_header: HeaderValue::from_str(&name).map_err(|_| err(bpath(), "invalid name"))?,
                    metrics: Arc::new(BackendHandles::new(model_name.clone(), name.clone())),
                    name,
                    provider: pi,
                    upstream_model,
                    upstream_model_json,
                    state,
                    identity,
                    price,
                },
                ep,
            ));
        }
        let [openai, anthropic] = per_kind;
        let (openai_other, anthropic_other) = (openai.clone(), anthropic.clone());
        let routes = [
            route_for(openai, anthropic_other, strategy),
            route_for(anthropic, openai_other, strategy),
        ];
        let model = Model {
            limits: limits.set(&limits.models, &m.name, None),
            metrics: Arc::new(ModelHandles::new(model_name.clone())),
            name: model_name,
            max_retries: retry.max_retries.unwrap_or(2),
            per_try_timeout: (retry.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(retry.per_try_timeout_ms)),
            affinity,
            enabled: m.enabled.unwrap_or(true),
            default_max_tokens: match m.default_max_tokens {
                Some(0) => return Err(err(format!("{}.default_max_tokens", path()), "must be > 0")),
                Some(n) => u64::from(n),
                None => crate::proxy::translate::DEFAULT_MAX_TOKENS,
            },
            routes,
        };
        if models.insert(m.name.clone(), model).is_some() {
            return Err(err(path(), "duplicate model name"));
        }
    }
    let mut model_names: Vec<String> = models
        .values()
        .filter(|m| m.enabled)
        .map(|m| m.name.to_string())
        .collect();
    model_names.sort();

    let mut keys = FxHashMap::with_capacity_and_hasher(snap.keys.len(), Default::default());
    for k in &snap.keys {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(k.key_hash.trim(), &mut digest)
            .map_err(|_| err(format!("keys.{}.key_hash", k.name), "must be 64 hex characters"))?;
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
                may_pin: k.allow_pin,
                team: (!k.team.is_empty()).then(|| k.team.as_str().into()),
                limits: limits.set(
                    &limits.keys,
                    &k.name,
                    (!k.team.is_empty()).then_some((&limits.teams, k.team.as_str())),
                ),
            },
        );
    }
    let mut aliases = Aliases::default();
    let mut by_name: Vec<&pb::Model> = snap.models.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    for m in by_name {
        for a in &m.aliases {
            if a.contains('*') {
                aliases.patterns.push((a.clone(), m.name.clone()));
            } else if models.contains_key(a) || aliases.exact.insert(a.clone(), m.name.clone()).is_some() {
                return Err(err(
                    format!("models.{}.aliases", m.name),
                    format!("`{a}` names another model or alias"),
                ));
            }
        }
    }
    Ok(Routing {
        version: snap.version,
        hash: snap.hash.clone(),
        providers,
        models,
        model_names,
        aliases,
        keys,
        limits: limits.all,
    })
}

/// A provider's way to its origin (`upstream::Egress`): its proxy (`env`: the worker's
/// environment, read now) and its own TLS files, read now (a changed file takes effect at
/// the next snapshot; a new file's contents make a new pool). Nothing to do, and no pool
/// of its own, for a provider with none of them.
fn egress(p: &pb::Provider, url: &url::Url, path: &str) -> Result<crate::upstream::Egress, ConvertError> {
    use crate::upstream::{Egress, ProxyConfig, UpstreamTls};
    let proxy = match p.proxy.trim() {
        "" => None,
        "env" => ProxyConfig::from_env(url, &|k| std::env::var(k).ok())
            .map_err(|e| err(format!("{path}.proxy"), e))?,
        text => Some(
            ProxyConfig::parse(
                text,
                (!p.proxy_password.is_empty()).then_some(p.proxy_password.as_str()),
            )
            .map_err(|e| err(format!("{path}.proxy"), e))?,
        ),
    };
    let read = |field: &str, file: &str| {
        std::fs::read(file).map_err(|e| err(format!("{path}.{field}"), format!("{file}: {e}")))
    };
    let ca = match p.ca_file.as_str() {
        "" => None,
        f => Some(read("ca_file", f)?),
    };
    let client = match (p.client_cert_file.as_str(), p.client_key_file.as_str()) {
        ("", "") => None,
        ("", _) | (_, "") => {
            return Err(err(
                format!("{path}.client_cert_file"),
                "client_cert_file and client_key_file go together",
            ))
        }
        (c, k) => Some((read("client_cert_file", c)?, read("client_key_file", k)?)),
    };
    let tls = if ca.is_none() && client.is_none() {
        None
    } else {
        let field = if ca.is_some() {
            "ca_file"
        } else {
            "client_cert_file"
        };
        Some(
            UpstreamTls::from_pem(ca.as_deref(), client.as_ref().map(|(c, k)| (&c[..], &k[..])))
                .map_err(|e| err(format!("{path}.{field}"), e))?,
        )
    };
    Ok(Egress { proxy, tls })
}

/// Limit states by the name of what they apply to.
type ByName = FxHashMap<String, Vec<Arc<LimitState>>>;

/// The snapshot's limits, validated, with their live states, by what they apply to.
struct Limits {
    all: Vec<Arc<LimitState>>,
    keys: ByName,
    teams: ByName,
    models: ByName,
    credentials: FxHashMap<(String, String), Vec<Arc<LimitState>>>,
}

impl Limits {
    /// `name`'s limits in `map`, and those of `and` (a key's team), as one set.
    fn set(&self, map: &ByName, name: &str, and: Option<(&ByName, &str)>) -> Option<LimitSet> {
        let own = map.get(name).map(Vec::as_slice).unwrap_or_default();
        let more = and
            .and_then(|(m, n)| m.get(n))
            .map(Vec::as_slice)
            .unwrap_or_default();
        if own.is_empty() && more.is_empty() {
            return None;
        }
        Some(own.iter().chain(more).cloned().collect())
    }

    fn credential(&self, provider: &str, name: &str) -> Option<LimitSet> {
        self.credentials
            .get(&(provider.to_string(), name.to_string()))
            .map(|v| v.iter().cloned().collect())
    }
}

/// Validate the snapshot's limits (errors name `limits[i].field`) and give each its live
/// state: the previous one while the definition is unchanged, else a new one.
fn limits(snap: &pb::Snapshot, prev: &States) -> Result<Limits, ConvertError> {
    use switchyard_common::window::Window;
    let mut out = Limits {
        all: Vec::with_capacity(snap.limits.len()),
        keys: FxHashMap::default(),
        teams: FxHashMap::default(),
        models: FxHashMap::default(),
        credentials: FxHashMap::default(),
    };
    if snap.limits.is_empty() {
        return Ok(out);
    }
    let keys: FxHashSet<&str> = snap.keys.iter().map(|k| k.name.as_str()).collect();
    let models: FxHashSet<&str> = snap.models.iter().map(|m| m.name.as_str()).collect();
    let creds: FxHashSet<(&str, &str)> = snap
        .providers
        .iter()
        .flat_map(|p| {
            p.credentials
                .iter()
                .map(move |c| (p.name.as_str(), c.name.as_str()))
        })
        .collect();
    let mut names = FxHashSet::default();
    for (i, l) in snap.limits.iter().enumerate() {
        let at = |f: &str| format!("limits[{i}].{f}");
        if l.name.is_empty() {
            return Err(err(at("name"), "empty name"));
        }
        if !names.insert(l.name.as_str()) {
            return Err(err(at("name"), format!("duplicate limit name `{}`", l.name)));
        }
        let scope = Scope::parse(&l.scope).ok_or_else(|| {
            err(
                at("scope"),
                format!(
                    "`{}` is not key:NAME, team:NAME, model:NAME or credential:PROVIDER/NAME",
                    l.scope
                ),
            )
        })?;
        let exists = match &scope {
            Scope::Key(k) => keys.contains(k.as_str()),
            Scope::Team(_) => true,
            Scope::Model(m) => models.contains(m.as_str()),
            Scope::Credential { provider, name } => creds.contains(&(provider.as_str(), name.as_str())),
        };
        if !exists {
            return Err(err(
                at("scope"),
                format!("`{}` names nothing in the snapshot", l.scope),
            ));
        }
        let kind =
            Kind::parse(&l.kind).ok_or_else(|| err(at("kind"), format!("unknown kind `{}`", l.kind)))?;
        let window = match (kind, l.window.as_str()) {
            (Kind::Concurrency, "") => None,
            (Kind::Concurrency, _) => return Err(err(at("window"), "must be empty for concurrency")),
            (_, w) => Some(
                Window::parse(w)
                    .ok_or_else(|| err(at("window"), format!("`{w}` is not one of {}", Window::ALL)))?,
            ),
        };
        let mode = match l.mode.as_str() {
            "" | "enforce" => Mode::Enforce,
            "observe" => Mode::Observe,
            m => return Err(err(at("mode"), format!("unknown mode `{m}`"))),
        };
        let on_outage = match l.on_outage.as_str() {
            "" | "closed" => Outage::Closed,
            "open" => Outage::Open,
            o => return Err(err(at("on_outage"), format!("unknown on_outage `{o}`"))),
        };
        let def = LimitDef {
            name: l.name.as_str().into(),
            scope,
            kind,
            window,
            amount: l.amount,
            mode,
            on_outage,
        };
        let state = match prev.limits.get(l.name.as_str()) {
            Some(s) if s.def == def => s.clone(),
            _ => Arc::new(LimitState::new(def)),
        };
        let target = match &state.def.scope {
            Scope::Key(k) => out.keys.entry(k.clone()).or_default(),
            Scope::Team(t) => out.teams.entry(t.clone()).or_default(),
            Scope::Model(m) => out.models.entry(m.clone()).or_default(),
            Scope::Credential { provider, name } => out
                .credentials
                .entry((provider.clone(), name.clone()))
                .or_default(),
        };
        target.push(state.clone());
        out.all.push(state);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> pb::Snapshot {
        pb::Snapshot {
            version: 1,
            providers: vec![pb::Provider {
                name: "p".into(),
                kind: "openai".into(),
                base_url: "http://127.0.0.1:9/v1".into(),
                credentials: vec![pb::Credential {
                    name: "k".into(),
                    secret: "sk-1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            models: vec![pb::Model {
                name: "m".into(),
                backends: vec![
                    pb::Backend {
                        name: "a".into(),
                        provider: "p".into(),
                        upstream_model: "up-a".into(),
                        ..Default::default()
                    },
                    pb::Backend {
                        name: "b".into(),
                        provider: "p".into(),
                        upstream_model: "up-b".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn build_err(s: &pb::Snapshot) -> String {
        let c = Connector::new().unwrap();
        build(s, &States::default(), &c, BreakerConfig::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn errors_name_the_path() {
        let mut s = snap();
        s.models[0].backends[1].provider = "nope".into();
        assert_eq!(
            build_err(&s),
            "models.m.backends[1].provider: unknown provider `nope`"
        );
        let mut s = snap();
        s.models[0].backends[1].name = "a".into();
        assert_eq!(build_err(&s), "models.m.backends[1]: duplicate backend name `a`");
        let mut s = snap();
        s.models[0].backends[0].weight = Some(0);
        assert_eq!(build_err(&s), "models.m.backends[0].weight: must be > 0");
        let mut s = snap();
        s.models[0].strategy = "zigzag".into();
        assert_eq!(build_err(&s), "models.m.strategy: unknown strategy `zigzag`");
        let mut s = snap();
        s.models.push(s.models[0].clone());
        assert_eq!(build_err(&s), "models.m: duplicate model name");
        let mut s = snap();
        s.keys.push(pb::ApiKey {
            name: "ci".into(),
            key_hash: "xyz".into(),
            ..Default::default()
        });
        assert_eq!(build_err(&s), "keys.ci.key_hash: must be 64 hex characters");
    }

    /// The provider's pass-through settings and the key's pin permission reach the
    /// routing table: header names lowercased, paths as given.
    #[test]
    fn passthrough_settings_and_pin_permission_reach_the_worker() {
        let mut s = snap();
        s.providers[0].allow_paths = vec!["/v1/files".into(), "/v1/fine_tuning/*".into()];
        s.providers[0].forward_headers = vec!["OpenAI-Organization".into(), "openai-project".into()];
        s.keys = vec![
            pb::ApiKey {
                name: "pinner".into(),
                key_hash: "ab".repeat(32),
                allow_pin: true,
                ..Default::default()
            },
            pb::ApiKey {
                name: "plain".into(),
                key_hash: "cd".repeat(32),
                ..Default::default()
            },
        ];
        let c = Connector::new().unwrap();
        let r = build(&s, &States::default(), &c, BreakerConfig::default()).unwrap();
        let p = &r.providers[0];
        assert_eq!(p.extra_paths, ["/v1/files", "/v1/fine_tuning/*"]);
        assert_eq!(p.forward_headers, ["openai-organization", "openai-project"]);
        let by_name = |n: &str| r.keys.values().find(|k| &*k.name == n).unwrap().may_pin;
        assert!(by_name("pinner"));
        assert!(!by_name("plain"), "pinning is off unless granted");
        // Defaults: nothing opened, nothing forwarded.
        let r = build(&snap(), &States::default(), &c, BreakerConfig::default()).unwrap();
        assert!(r.providers[0].extra_paths.is_empty() && r.providers[0].forward_headers.is_empty());
    }

    #[test]
    fn passthrough_errors_name_the_entry() {
        let mut s = snap();
        s.providers[0].allow_paths = vec!["/v1/files".into(), "/v1/../admin".into()];
        assert_eq!(
            build_err(&s),
            r#"providers.p.allow_paths[1]: "/v1/../admin" must not contain `.` or `..` segments"#
        );
        let mut s = snap();
        s.providers[0].allow_paths = vec!["/v1/files/%2e%2e".into()];
        assert!(
            build_err(&s).starts_with("providers.p.allow_paths[0]: "),
            "{}",
            build_err(&s)
        );
        let mut s = snap();
        s.providers[0].forward_headers = vec!["openai-project".into(), "bad header".into()];
        assert!(
            build_err(&s).starts_with("providers.p.forward_headers[1]: "),
            "{}",
            build_err(&s)
        );
        let mut s = snap();
        s.providers[0].forward_headers = vec!["Authorization".into()];
        assert!(
            build_err(&s).starts_with("providers.p.forward_headers[0]: "),
            "{}",
            build_err(&s)
        );
    }

    /// Credential weights are honoured: with the default `round_robin` credential
    /// strategy, a 3:1 pair is picked exactly 3:1 over whole smooth-WRR cycles.
    #[test]
    fn credential_weights_are_applied() {
        let mut s = snap();
        s.providers[0].credentials = vec![
            pb::Credential {
                name: "heavy".into(),
                secret: "sk-h".into(),
                weight: Some(3),
                ..Default::default()
            },
            pb::Credential {
                name: "light".into(),
                secret: "sk-l".into(),
                weight: Some(1),
                ..Default::default()
            },
        ];
        let c = Connector::new().unwrap();
        for strategy in ["", "round_robin"] {
            s.providers[0].credential_strategy = strategy.into();
            let r = build(&s, &States::default(), &c, BreakerConfig::default()).unwrap();
            let p = &r.providers[0];
            let ctx = crate::balance::PickContext::default();
            let mut n = [0usize; 2];
            for _ in 0..400 {
                n[p.cred_selector.pick(&p.cred_endpoints, &ctx).unwrap().index] += 1;
            }
            assert_eq!(n, [300, 100], "strategy {strategy:?}");
        }
        // `random` becomes weighted random: about 3:1.
        s.providers[0].credential_strategy = "random".into();
        let r = build(&s, &States::default(), &c, BreakerConfig::default()).unwrap();
        let p = &r.providers[0];
        let ctx = crate::balance::PickContext::default();
        let heavy = (0..4_000)
            .filter(|_| p.cred_selector.pick(&p.cred_endpoints, &ctx).unwrap().index == 0)
            .count();
        assert!((2_700..=3_300).contains(&heavy), "{heavy}");
    }

    fn limit(name: &str, scope: &str, kind: &str, window: &str, amount: u64) -> pb::Limit {
        pb::Limit {
            name: name.into(),
            scope: scope.into(),
            kind: kind.into(),
            window: window.into(),
            amount,
            ..Default::default()
        }
    }

    fn key(name: &str, team: &str, hash: &str) -> pb::ApiKey {
        pb::ApiKey {
            name: name.into(),
            team: team.into(),
            key_hash: hash.repeat(32),
            ..Default::default()
        }
    }

    /// Each key gets its own limits and its team's, the model and the credential theirs;
    /// a key with none has `None` (no work per request). States carry over a swap while
    /// the definition is the same.
    #[test]
    fn limits_resolve_per_key_team_model_and_credential() {
        let mut s = snap();
        s.keys = vec![key("a", "red", "aa"), key("b", "red", "bb"), key("c", "", "cc")];
        s.limits = vec![
            limit("a-rpm", "key:a", "requests", "minute", 10),
            limit("red-tpm", "team:red", "tokens", "minute", 1_000),
            limit("m-conc", "model:m", "concurrency", "", 4),
            limit("cred-rpm", "credential:p/k", "requests", "minute", 100),
            limit("ghost-team", "team:blue", "spend", "month", 5),
        ];
        let c = Connector::new().unwrap();
        let r = build(&s, &States::default(), &c, BreakerConfig::default()).unwrap();
        let names = |set: &Option<LimitSet>| -> Vec<String> {
            set.iter()
                .flat_map(|s| s.iter())
                .map(|l| l.def.name.to_string())
                .collect()
        };
        let k = |n: &str| r.keys.values().find(|k| &*k.name == n).unwrap();
        assert_eq!(names(&k("a").limits), ["a-rpm", "red-tpm"]);
        assert_eq!(names(&k("b").limits), ["red-tpm"]);
        assert!(k("c").limits.is_none() && k("c").team.is_none());
        assert_eq!(k("a").team.as_deref(), Some("red"));
        assert_eq!(names(&r.models["m"].limits), ["m-conc"]);
        assert_eq!(names(&r.providers[0].credentials[0].limits), ["cred-rpm"]);
        assert_eq!(r.limits.len(), 5);
        // The team's state is one, shared by its keys.
        let team = |n: &str| {
            k(n).limits
                .as_ref()
                .unwrap()
                .iter()
                .find(|l| &*l.def.name == "red-tpm")
                .unwrap()
                .clone()
        };
        assert!(Arc::ptr_eq(&team("a"), &team("b")));
        // Across a swap: unchanged definitions keep their state, a changed one starts anew.
        let mut next = s.clone();
        next.limits[0].amount = 20;
        let r2 = build(&next, &r.states(), &c, BreakerConfig::default()).unwrap();
        let by = |r: &Routing, n: &str| r.limits.iter().find(|l| &*l.def.name == n).unwrap().clone();
        assert!(Arc::ptr_eq(&by(&r, "red-tpm"), &by(&r2, "red-tpm")));
        assert!(!Arc::ptr_eq(&by(&r, "a-rpm"), &by(&r2, "a-rpm")));
        assert_eq!(by(&r2, "a-rpm").def.amount, 20);
    }

    #[test]
    fn limit_errors_name_the_field() {
        let cases = [
            (limit("x", "key:nobody", "requests", "minute", 1), "limits[0].scope: `key:nobody` names nothing in the snapshot"),
            (limit("x", "model:none", "requests", "minute", 1), "limits[0].scope: `model:none` names nothing in the snapshot"),
            (limit("x", "credential:p/zz", "requests", "minute", 1), "limits[0].scope: `credential:p/zz` names nothing in the snapshot"),
            (limit("x", "user:u", "requests", "minute", 1), "limits[0].scope: `user:u` is not key:NAME, team:NAME, model:NAME or credential:PROVIDER/NAME"),
            (limit("x", "team:t", "bytes", "minute", 1), "limits[0].kind: unknown kind `bytes`"),
            (limit("x", "team:t", "requests", "week", 1), "limits[0].window: `week` is not one of minute, hour, day, month"),
            (limit("x", "team:t", "requests", "", 1), "limits[0].window: `` is not one of minute, hour, day, month"),
            (limit("x", "team:t", "concurrency", "minute", 1), "limits[0].window: must be empty for concurrency"),
            (pb::Limit { mode: "warn".into(), ..limit("x", "team:t", "requests", "day", 1) }, "limits[0].mode: unknown mode `warn`"),
            (pb::Limit { on_outage: "maybe".into(), ..limit("x", "team:t", "requests", "day", 1) }, "limits[0].on_outage: unknown on_outage `maybe`"),
        ];
        for (l, want) in cases {
            let mut s = snap();
            s.limits = vec![l];
            assert_eq!(build_err(&s), want);
        }
        let mut s = snap();
        s.limits = vec![
            limit("x", "team:t", "requests", "day", 1),
            limit("x", "team:u", "requests", "day", 1),
        ];
        assert_eq!(build_err(&s), "limits[1].name: duplicate limit name `x`");
    }

    /// An endpoint keeps its live state across a swap unless what makes it the same
    /// endpoint changed (upstream model, secret, ...).
    #[test]
    fn live_state_follows_identity() {
        let c = Connector::new().unwrap();
        let first = build(&snap(), &States::default(), &c, BreakerConfig::default()).unwrap();
        let mut next = snap();
        next.models[0].backends[1].upstream_model = "up-b2".into();
        let second = build(&next, &first.states(), &c, BreakerConfig::default()).unwrap();
        let b = |r: &Routing, i: usize| {
            r.models["m"].routes[0].as_ref().unwrap().backends[i]
                .state
                .clone()
        };
        assert!(
            Arc::ptr_eq(&b(&first, 0), &b(&second, 0)),
            "unchanged backend lost its state"
        );
        assert!(
            !Arc::ptr_eq(&b(&first, 1), &b(&second, 1)),
            "changed backend kept its state"
        );
        let cred = |r: &Routing| r.providers[0].credentials[0].state.clone();
        assert!(Arc::ptr_eq(&cred(&first), &cred(&second)));
        let mut rotated = next.clone();
        rotated.providers[0].credentials[0].secret = "sk-2".into();
        let third = build(&rotated, &second.states(), &c, BreakerConfig::default()).unwrap();
        assert!(
            !Arc::ptr_eq(&cred(&second), &cred(&third)),
            "a new secret is a new credential"
        );
        let id = &third.providers[0].credentials[0].identity;
        assert!(
            id.starts_with("c/p/k/") && id.len() == "c/p/k/".len() + 24,
            "{id}"
        );
        assert!(!id.contains("sk-2"));
        let names = &third.models["m"].routes[0].as_ref().unwrap().backends;
        assert_eq!(names.iter().map(|b| &*b.name).collect::<Vec<_>>(), ["a", "b"]);
    }
}
