//! The only module that knows protobuf types: proto → domain (parse, apply defaults,
//! validate, with errors naming the field) and domain → proto (effective values,
//! secrets redacted unless a snapshot asks for them), plus `update_mask` merging.
use std::collections::{BTreeMap, HashMap};

use switchyard_proto::v1 as pb;

use crate::model::*;
use crate::secret::Secret;
use crate::Error;

pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_HEALTHY_BELOW: u32 = 500;
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Upper bound on retries: more would turn one client request into a storm.
pub const MAX_RETRIES_LIMIT: u32 = 10;

/// Whether credential secrets leave in clear (snapshots, `Export(include_secrets)`) or redacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    Clear,
    Redact,
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn btree(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn hashmap(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn or_default(v: u64, d: u64) -> u64 {
    if v == 0 {
        d
    } else {
        v
    }
}

/// Proto provider → domain provider (without credentials), applying defaults.
pub fn provider_from_proto(p: &pb::Provider) -> Result<Provider, Error> {
    validate_name("provider", &p.name)?;
    let what = format!("provider {}", p.name);
    let kind = ProviderKind::parse(&p.kind).ok_or_else(|| {
        invalid(format!(
            "{what}: kind {:?} is not one of {}",
            p.kind,
            ProviderKind::ALL
        ))
    })?;
    let url_ok = url::Url::parse(&p.base_url)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .unwrap_or(false);
    if !url_ok {
        return Err(invalid(format!(
            "{what}: base_url must be an absolute http(s) URL (got {:?})",
            p.base_url
        )));
    }
    let auth = p.auth.clone().unwrap_or_default();
    if !auth.header.is_empty() && !valid_header_name(&auth.header) {
        return Err(invalid(format!(
            "{what}: auth.header {:?} is not a valid HTTP header name",
            auth.header
        )));
    }
    for (k, v) in &p.headers {
        if !valid_header_name(k) {
            return Err(invalid(format!(
                "{what}: headers: {k:?} is not a valid HTTP header name"
            )));
        }
        if v.contains(['\r', '\n']) {
            return Err(invalid(format!(
                "{what}: headers.{k}: value must not contain line breaks"
            )));
        }
    }
    let h = p.health.clone().unwrap_or_default();
    let probe = if h.probe.is_empty() {
        kind.default_probe().to_string()
    } else {
        h.probe.clone()
    };
    let probe_ok = probe == "models"
        || probe
            .strip_prefix("chat:")
            .or_else(|| probe.strip_prefix("messages:"))
            .is_some_and(|m| !m.is_empty());
    if !probe_ok {
        return Err(invalid(format!(
            "{what}: health.probe {probe:?} must be `models`, `chat:MODEL` or `messages:MODEL`"
        )));
    }
    if h.healthy_below > 999 {
        return Err(invalid(format!(
            "{what}: health.healthy_below must be an HTTP status (100..=999)"
        )));
    }
    let credential_strategy = if p.credential_strategy.is_empty() {
        CredentialStrategy::RoundRobin
    } else {
        CredentialStrategy::parse(&p.credential_strategy).ok_or_else(|| {
            invalid(format!(
                "{what}: credential_strategy {:?} is not one of {}",
                p.credential_strategy,
                CredentialStrategy::ALL
            ))
        })?
    };
    let (allow_paths, forward_headers) = passthrough_from_proto(&what, p, &auth.header)?;
    let egress = egress_from_proto(&what, p)?;
    Ok(Provider {
        name: p.name.clone(),
        spec: ProviderSpec {
            kind,
            base_url: p.base_url.clone(),
            connect_timeout_ms: or_default(p.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS),
            request_timeout_ms: or_default(p.request_timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS),
            idle_timeout_ms: or_default(p.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS),
            total_timeout_ms: p.total_timeout_ms,
            auth: AuthScheme {
                header: auth.header,
                prefix: auth.prefix,
            },
            headers: btree(&p.headers),
            health: HealthCheck {
                enabled: h.enabled.unwrap_or(true),
                interval_ms: or_default(h.interval_ms, DEFAULT_HEALTH_INTERVAL_MS),
                timeout_ms: or_default(h.timeout_ms, DEFAULT_HEALTH_TIMEOUT_MS),
                probe,
                healthy_below: if h.healthy_below == 0 {
                    DEFAULT_HEALTHY_BELOW
                } else {
                    h.healthy_below
                },
            },
            credential_strategy,
            enabled: p.enabled.unwrap_or(true),
            description: p.description.clone(),
            metadata: btree(&p.metadata),
            allow_paths,
            forward_headers,
            proxy: egress.proxy,
            proxy_password: crate::secret::Secret::new(p.proxy_password.clone()),
            ca_file: egress.ca_file,
            client_cert_file: egress.client_cert_file,
            client_key_file: egress.client_key_file,
        },
        credentials: BTreeMap::new(),
        created_at_ms: 0,
        updated_at_ms: 0,
    })
}

/// The egress fields of a provider, checked (errors name the field).
struct EgressSpec {
    proxy: String,
    ca_file: String,
    client_cert_file: String,
    client_key_file: String,
}

fn egress_from_proto(what: &str, p: &pb::Provider) -> Result<EgressSpec, Error> {
    let proxy = p.proxy.trim().to_string();
    let mut has_user = false;
    if !proxy.is_empty() && proxy != "env" {
        let u = url::Url::parse(&proxy).map_err(|e| {
            invalid(format!(
                "{what}: proxy: {e} (want `env` or http://[user@]host[:port])"
            ))
        })?;
        if u.scheme() != "http" {
            return Err(invalid(format!(
                "{what}: proxy: scheme `{}`: only http:// proxies are supported (CONNECT carries https)",
                u.scheme()
            )));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!("{what}: proxy: no host")));
        }
        if u.password().is_some() {
            return Err(invalid(format!(
                "{what}: proxy: put the password in proxy_password (stored encrypted), not in the URL"
            )));
        }
        if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
            return Err(invalid(format!(
                "{what}: proxy: a proxy URL has no path, query or fragment"
            )));
        }
        has_user = !u.username().is_empty();
    }
    let pw = &p.proxy_password;
    if !pw.is_empty() && !crate::secret::is_redacted(pw) && !has_user {
        return Err(invalid(format!(
            "{what}: proxy_password: needs a proxy URL with a user (http://user@host:port)"
        )));
    }
    let file = |field: &str, v: &str| -> Result<String, Error> {
        if v.is_empty() {
            return Ok(String::new());
        }
        if !v.starts_with('/') || v.contains(['\0', '\n', '\r']) {
            return Err(invalid(format!(
                "{what}: {field}: {v:?} must be an absolute path on the worker host"
            )));
        }
        Ok(v.to_string())
    };
    let ca_file = file("ca_file", &p.ca_file)?;
    let client_cert_file = file("client_cert_file", &p.client_cert_file)?;
    let client_key_file = file("client_key_file", &p.client_key_file)?;
    if client_cert_file.is_empty() != client_key_file.is_empty() {
        let missing = if client_cert_file.is_empty() {
            "client_cert_file"
        } else {
            "client_key_file"
        };
        return Err(invalid(format!(
            "{what}: {missing}: client_cert_file and client_key_file go together"
        )));
    }
    Ok(EgressSpec {
        proxy,
        ca_file,
        client_cert_file,
        client_key_file,
    })
}

/// `allow_paths` and `forward_headers`, checked (errors name the entry:
/// `allow_paths[1]`), then sorted and deduplicated; header names lowercased.
fn passthrough_from_proto(
    what: &str,
    p: &pb::Provider,
    auth_header: &str,
) -> Result<(Vec<String>, Vec<String>), Error> {
    use switchyard_common::passthrough::{check_api_path, check_forward_header, MAX_ENTRIES};
    for (field, n) in [
        ("allow_paths", p.allow_paths.len()),
        ("forward_headers", p.forward_headers.len()),
    ] {
        if n > MAX_ENTRIES {
            return Err(invalid(format!("{what}: {field}: at most {MAX_ENTRIES} entries")));
        }
    }
    let mut paths = Vec::with_capacity(p.allow_paths.len());
    for (i, path) in p.allow_paths.iter().enumerate() {
        check_api_path(path).map_err(|e| invalid(format!("{what}: allow_paths[{i}]: {e}")))?;
        paths.push(path.clone());
    }
    let mut headers = Vec::with_capacity(p.forward_headers.len());
    for (i, h) in p.forward_headers.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        check_forward_header(&h).map_err(|e| invalid(format!("{what}: forward_headers[{i}]: {e}")))?;
        if !auth_header.is_empty() && h.eq_ignore_ascii_case(auth_header) {
            return Err(invalid(format!(
                "{what}: forward_headers[{i}]: {h:?} carries the provider's credential and cannot be forwarded"
            )));
        }
        headers.push(h);
    }
    for v in [&mut paths, &mut headers] {
        v.sort();
        v.dedup();
    }
    Ok((paths, headers))
}

/// Proto credential → domain credential. An empty secret stays empty here; the caller
/// decides whether that means "keep the stored one" or is an error.
pub fn credential_from_proto(provider: &str, c: &pb::Credential) -> Result<Credential, Error> {
    validate_name(&format!("credential {provider}/{}", c.name), &c.name)?;
    let what = format!("credential {provider}/{}", c.name);
    let weight = c.weight.unwrap_or(1);
    if weight == 0 {
        return Err(invalid(format!("{what}: weight must be > 0")));
    }
    Ok(Credential {
        name: c.name.clone(),
        secret: Secret::new(c.secret.clone()),
        spec: CredentialSpec {
            weight,
            enabled: c.enabled.unwrap_or(true),
            description: c.description.clone(),
            metadata: btree(&c.metadata),
        },
        created_at_ms: 0,
        updated_at_ms: 0,
    })
}

/// Proto model → domain model (without backends).
/// A proto price, validated: `input` and `output` are required, and no class may cost
/// more than [`MAX_PRICE_NANO`]. Errors name `what` (`model gpt-4o: price`).
pub fn price_from_proto(what: &str, p: &pb::Price) -> Result<Price, Error> {
    let check = |class: &str, v: Option<u64>| -> Result<Option<u64>, Error> {
        match v {
            Some(n) if n > MAX_PRICE_NANO => Err(invalid(format!(
                "{what}.{class}: {n} nano-units per token is more than the largest price, {MAX_PRICE_NANO}"
            ))),
            v => Ok(v),
        }
    };
    let required = |class: &str, v: Option<u64>| -> Result<u64, Error> {
        check(class, v)?.ok_or_else(|| invalid(format!("{what}.{class} is required")))
    };
    Ok(Price {
        input: required("input", p.input)?,
        cached_input: check("cached_input", p.cached_input)?,
        cache_write: check("cache_write", p.cache_write)?,
        output: required("output", p.output)?,
        reasoning: check("reasoning", p.reasoning)?,
    })
}

pub fn price_to_proto(p: &Price) -> pb::Price {
    pb::Price {
        input: Some(p.input),
        cached_input: p.cached_input,
        cache_write: p.cache_write,
        output: Some(p.output),
        reasoning: p.reasoning,
    }
}

pub fn model_from_proto(m: &pb::Model) -> Result<Model, Error> {
    validate_name("model", &m.name)?;
    let what = format!("model {}", m.name);
    let strategy = if m.strategy.is_empty() {
        Strategy::RoundRobin
    } else {
        Strategy::parse(&m.strategy).ok_or_else(|| {
            invalid(format!(
                "{what}: strategy {:?} is not one of {}",
                m.strategy,
                Strategy::ALL
            ))
        })?
    };
    let r = m.retry.unwrap_or_default();
    let max_retries = r.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if max_retries > MAX_RETRIES_LIMIT {
        return Err(invalid(format!(
            "{what}: retry.max_retries must be <= {MAX_RETRIES_LIMIT}"
        )));
    }
    let a = m.affinity.clone().unwrap_or_default();
    let akind = if a.kind.is_empty() {
        AffinityKind::None
    } else {
        AffinityKind::parse(&a.kind).ok_or_else(|| {
            invalid(format!(
                "{what}: affinity.kind {:?} is not one of {}",
                a.kind,
                AffinityKind::ALL
            ))
        })?
    };
    if akind == AffinityKind::Header && !valid_header_name(&a.header) {
        return Err(invalid(format!(
            "{what}: affinity.header must be a valid HTTP header name when affinity.kind is header"
        )));
    }
    let mut aliases: Vec<String> = Vec::with_capacity(m.aliases.len());
    for a in &m.aliases {
        let ok = !a.is_empty()
            && a.len() <= 128
            && a.bytes().all(|b| b.is_ascii_graphic())
            && a.bytes().any(|b| b != b'*');
        if !ok {
            return Err(invalid(format!(
                "{what}: alias {a:?} must be 1 to 128 printable ASCII characters, not only `*`"
            )));
        }
        if *a == m.name || aliases.contains(a) {
            return Err(invalid(format!("{what}: alias {a:?} is given twice")));
        }
        aliases.push(a.clone());
    }
    if m.default_max_tokens == Some(0) {
        return Err(invalid(format!("{what}: default_max_tokens must be > 0")));
    }
    Ok(Model {
        name: m.name.clone(),
        spec: ModelSpec {
            aliases,
            default_max_tokens: m.default_max_tokens,
            strategy,
            retry: RetryPolicy {
                max_retries,
                per_try_timeout_ms: r.per_try_timeout_ms,
            },
            affinity: Affinity {
                kind: akind,
                header: if akind == AffinityKind::Header {
                    a.header
                } else {
                    String::new()
                },
            },
            enabled: m.enabled.unwrap_or(true),
            description: m.description.clone(),
            metadata: btree(&m.metadata),
            price: m
                .price
                .as_ref()
                .map(|p| price_from_proto(&format!("{what}: price"), p))
                .transpose()?,
        },
        backends: BTreeMap::new(),
        created_at_ms: 0,
        updated_at_ms: 0,
    })
}

/// Proto backend → domain backend for `model`. Name defaults to the provider's name,
/// upstream_model to the model's public name.
pub fn backend_from_proto(model: &str, b: &pb::Backend) -> Result<Backend, Error> {
    let name = if b.name.is_empty() {
        b.provider.clone()
    } else {
        b.name.clone()
    };
    let what = format!("backend {model}/{name}");
    if b.provider.is_empty() {
        return Err(invalid(format!("{what}: provider is required")));
    }
    validate_name(&what, &name)?;
    validate_name(&format!("{what}: provider"), &b.provider)?;
    let weight = b.weight.unwrap_or(1);
    if weight == 0 {
        return Err(invalid(format!("{what}: weight must be > 0")));
    }
    Ok(Backend {
        name,
        spec: BackendSpec {
            provider: b.provider.clone(),
            upstream_model: if b.upstream_model.is_empty() {
                model.to_string()
            } else {
                b.upstream_model.clone()
            },
            weight,
            priority: b.priority.unwrap_or(0),
            enabled: b.enabled.unwrap_or(true),
            price: b
                .price
                .as_ref()
                .map(|p| price_from_proto(&format!("{what}: price"), p))
                .transpose()?,
        },
        created_at_ms: 0,
        updated_at_ms: 0,
    })
}

/// Validate the user-settable parts of a key (names of allowed models, expiry).
pub fn key_spec_from_proto(
    name: &str,
    allowed_models: &[String],
    expires_at_ms: i64,
    description: &str,
    enabled: Option<bool>,
    allow_pin: bool,
    team: &str,
) -> Result<ApiKeySpec, Error> {
    validate_name("key", name)?;
    if !team.is_empty() {
        validate_name(&format!("key {name}: team"), team)?;
    }
    for m in allowed_models {
        validate_name(&format!("key {name}: allowed_models"), m)?;
    }
    if expires_at_ms < 0 {
        return Err(invalid(format!("key {name}: expires_at_ms must be >= 0")));
    }
    let mut allowed = allowed_models.to_vec();
    allowed.sort();
    allowed.dedup();
    Ok(ApiKeySpec {
        allowed_models: allowed,
        enabled: enabled.unwrap_or(true),
        revoked: false,
        expires_at_ms,
        description: description.to_string(),
        allow_pin,
        team: team.to_string(),
    })
}

/// Proto limit → domain limit, applying defaults (`enforce`, `closed`). `what` is the
/// field path errors start with: `limit` for the CRUD RPCs, `limits[2]` in a document.
/// Whether the scope's object exists is checked against the whole config later
/// ([`LimitScope::missing_in`]).
pub fn limit_from_proto(what: &str, l: &pb::Limit) -> Result<Limit, Error> {
    use switchyard_common::window::Window;
    if validate_name("", &l.name).is_err() {
        return Err(invalid(format!(
            "{what}.name: {:?} must match [a-z0-9][a-z0-9._-]{{0,62}}",
            l.name
        )));
    }
    LimitScope::parse(&l.scope).map_err(|e| invalid(format!("{what}.scope: {e}")))?;
    let kind = LimitKind::parse(&l.kind).ok_or_else(|| {
        invalid(format!(
            "{what}.kind: {:?} is not one of {}",
            l.kind,
            LimitKind::ALL
        ))
    })?;
    let window = match (kind, l.window.as_str()) {
        (LimitKind::Concurrency, "") => None,
        (LimitKind::Concurrency, w) => {
            return Err(invalid(format!(
                "{what}.window: a concurrency limit has no window (got {w:?})"
            )))
        }
        (_, "") => {
            return Err(invalid(format!(
                "{what}.window is required (one of {})",
                Window::ALL
            )))
        }
        (_, w) => Some(
            Window::parse(w)
                .ok_or_else(|| invalid(format!("{what}.window: {w:?} is not one of {}", Window::ALL)))?,
        ),
    };
    if l.amount == 0 {
        return Err(invalid(format!("{what}.amount must be > 0")));
    }
    if i64::try_from(l.amount).is_err() {
        return Err(invalid(format!("{what}.amount must be below 2^63")));
    }
    let mode = match l.mode.as_str() {
        "" => LimitMode::Enforce,
        m => LimitMode::parse(m)
            .ok_or_else(|| invalid(format!("{what}.mode: {m:?} is not one of {}", LimitMode::ALL)))?,
    };
    let on_outage = match l.on_outage.as_str() {
        "" => OnOutage::Closed,
        o => OnOutage::parse(o)
            .ok_or_else(|| invalid(format!("{what}.on_outage: {o:?} is not one of {}", OnOutage::ALL)))?,
    };
    Ok(Limit {
        name: l.name.clone(),
        spec: LimitSpec {
            scope: l.scope.clone(),
            kind,
            window,
            amount: l.amount,
            mode,
            on_outage,
            description: l.description.clone(),
        },
        created_at_ms: 0,
        updated_at_ms: 0,
    })
}

pub fn limit_to_proto(l: &Limit) -> pb::Limit {
    let s = &l.spec;
    pb::Limit {
        name: l.name.clone(),
        scope: s.scope.clone(),
        kind: s.kind.as_str().into(),
        window: s.window.map(|w| w.as_str().to_string()).unwrap_or_default(),
        amount: s.amount,
        mode: s.mode.as_str().into(),
        on_outage: s.on_outage.as_str().into(),
        description: s.description.clone(),
        created_at_ms: l.created_at_ms,
        updated_at_ms: l.updated_at_ms,
    }
}

/// Copy the fields named in `mask` from `req` into `cur` (both limits in proto form).
pub fn merge_limit(cur: &mut pb::Limit, req: &pb::Limit, mask: &[String]) -> Result<(), Error> {
    let what = format!("limit {}", cur.name);
    if mask.is_empty() {
        return Err(empty_mask(&what));
    }
    for path in mask {
        match path.as_str() {
            "scope" => cur.scope = req.scope.clone(),
            "kind" => cur.kind = req.kind.clone(),
            "window" => cur.window = req.window.clone(),
            "amount" => cur.amount = req.amount,
            "mode" => cur.mode = req.mode.clone(),
            "on_outage" => cur.on_outage = req.on_outage.clone(),
            "description" => cur.description = req.description.clone(),
            p => return Err(bad_path(&what, p)),
        }
    }
    Ok(())
}

pub fn credential_to_proto(provider: &str, c: &Credential, secrets: Secrets) -> pb::Credential {
    pb::Credential {
        provider: provider.to_string(),
        name: c.name.clone(),
        secret: match secrets {
            Secrets::Clear => c.secret.expose().to_string(),
            Secrets::Redact => c.secret.redacted(),
        },
        weight: Some(c.spec.weight),
        enabled: Some(c.spec.enabled),
        metadata: hashmap(&c.spec.metadata),
        description: c.spec.description.clone(),
        created_at_ms: c.created_at_ms,
        updated_at_ms: c.updated_at_ms,
    }
}

pub fn provider_to_proto(p: &Provider, secrets: Secrets) -> pb::Provider {
    let s = &p.spec;
    pb::Provider {
        name: p.name.clone(),
        kind: s.kind.as_str().into(),
        base_url: s.base_url.clone(),
        connect_timeout_ms: s.connect_timeout_ms,
        request_timeout_ms: s.request_timeout_ms,
        idle_timeout_ms: s.idle_timeout_ms,
        total_timeout_ms: s.total_timeout_ms,
        auth: Some(pb::AuthScheme {
            header: s.auth.header.clone(),
            prefix: s.auth.prefix.clone(),
        }),
        headers: hashmap(&s.headers),
        health: Some(pb::HealthCheck {
            enabled: Some(s.health.enabled),
            interval_ms: s.health.interval_ms,
            timeout_ms: s.health.timeout_ms,
            probe: s.health.probe.clone(),
            healthy_below: s.health.healthy_below,
        }),
        credential_strategy: s.credential_strategy.as_str().into(),
        enabled: Some(s.enabled),
        description: s.description.clone(),
        metadata: hashmap(&s.metadata),
        allow_paths: s.allow_paths.clone(),
        forward_headers: s.forward_headers.clone(),
        proxy: s.proxy.clone(),
        proxy_password: match secrets {
            Secrets::Clear => s.proxy_password.expose().to_string(),
            Secrets::Redact if s.proxy_password.is_empty() => String::new(),
            Secrets::Redact => s.proxy_password.redacted(),
        },
        ca_file: s.ca_file.clone(),
        client_cert_file: s.client_cert_file.clone(),
        client_key_file: s.client_key_file.clone(),
        credentials: p
            .credentials
            .values()
            .map(|c| credential_to_proto(&p.name, c, secrets))
            .collect(),
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
    }
}

pub fn backend_to_proto(model: &str, b: &Backend) -> pb::Backend {
    pb::Backend {
        model: model.to_string(),
        name: b.name.clone(),
        provider: b.spec.provider.clone(),
        upstream_model: b.spec.upstream_model.clone(),
        weight: Some(b.spec.weight),
        priority: Some(b.spec.priority),
        enabled: Some(b.spec.enabled),
        created_at_ms: b.created_at_ms,
        updated_at_ms: b.updated_at_ms,
        price: b.spec.price.as_ref().map(price_to_proto),
    }
}

pub fn model_to_proto(m: &Model) -> pb::Model {
    let s = &m.spec;
    pb::Model {
        name: m.name.clone(),
        strategy: s.strategy.as_str().into(),
        retry: Some(pb::RetryPolicy {
            max_retries: Some(s.retry.max_retries),
            per_try_timeout_ms: s.retry.per_try_timeout_ms,
        }),
        affinity: Some(pb::Affinity {
            kind: s.affinity.kind.as_str().into(),
            header: s.affinity.header.clone(),
        }),
        enabled: Some(s.enabled),
        description: s.description.clone(),
        metadata: hashmap(&s.metadata),
        backends: m
            .backends
            .values()
            .map(|b| backend_to_proto(&m.name, b))
            .collect(),
        created_at_ms: m.created_at_ms,
        updated_at_ms: m.updated_at_ms,
        price: s.price.as_ref().map(price_to_proto),
        aliases: s.aliases.clone(),
        default_max_tokens: s.default_max_tokens,
    }
}

/// `with_hash` is true only inside snapshots.
pub fn key_to_proto(k: &ApiKey, with_hash: bool) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        allowed_models: k.spec.allowed_models.clone(),
        enabled: Some(k.spec.enabled),
        revoked: k.spec.revoked,
        created_at_ms: k.created_at_ms,
        expires_at_ms: k.spec.expires_at_ms,
        key_hash: if with_hash {
            k.key_hash.clone()
        } else {
            String::new()
        },
        description: k.spec.description.clone(),
        allow_pin: k.spec.allow_pin,
        team: k.spec.team.clone(),
    }
}

pub fn change_to_proto(c: &Change) -> pb::Change {
    pb::Change {
        kind: c.kind.to_string(),
        name: c.name.clone(),
        action: c.action.as_str().to_string(),
        fields: c.fields.clone(),
    }
}

/// The whole config as an Apply/Export document.
pub fn document_from_state(s: &ConfigState, secrets: Secrets) -> pb::ConfigDocument {
    pb::ConfigDocument {
        providers: s
            .providers
            .values()
            .map(|p| provider_to_proto(p, secrets))
            .collect(),
        models: s.models.values().map(model_to_proto).collect(),
        keys: s.keys.values().map(|k| key_to_proto(k, false)).collect(),
        limits: s.limits.values().map(limit_to_proto).collect(),
    }
}

fn empty_mask(what: &str) -> Error {
    invalid(format!("{what}: update_mask must list the fields to update"))
}

fn bad_path(what: &str, path: &str) -> Error {
    invalid(format!(
        "{what}: update_mask: unknown or read-only field {path:?}"
    ))
}

/// Copy the fields named in `mask` from `req` into `cur` (both providers in proto form).
pub fn merge_provider(cur: &mut pb::Provider, req: &pb::Provider, mask: &[String]) -> Result<(), Error> {
    let what = format!("provider {}", cur.name);
    if mask.is_empty() {
        return Err(empty_mask(&what));
    }
    let rh = req.health.clone().unwrap_or_default();
    let ra = req.auth.clone().unwrap_or_default();
    for path in mask {
        let h = cur.health.get_or_insert_with(Default::default);
        let a = cur.auth.get_or_insert_with(Default::default);
        match path.as_str() {
            "kind" => cur.kind = req.kind.clone(),
            "base_url" => cur.base_url = req.base_url.clone(),
            "connect_timeout_ms" => cur.connect_timeout_ms = req.connect_timeout_ms,
            "request_timeout_ms" => cur.request_timeout_ms = req.request_timeout_ms,
            "idle_timeout_ms" => cur.idle_timeout_ms = req.idle_timeout_ms,
            "total_timeout_ms" => cur.total_timeout_ms = req.total_timeout_ms,
            "auth" => cur.auth = Some(ra.clone()),
            "auth.header" => a.header = ra.header.clone(),
            "auth.prefix" => a.prefix = ra.prefix.clone(),
            "headers" => cur.headers = req.headers.clone(),
            "health" => cur.health = Some(rh.clone()),
            "health.enabled" => h.enabled = rh.enabled,
            "health.interval_ms" => h.interval_ms = rh.interval_ms,
            "health.timeout_ms" => h.timeout_ms = rh.timeout_ms,
            "health.probe" => h.probe = rh.probe.clone(),
            "health.healthy_below" => h.healthy_below = rh.healthy_below,
            "credential_strategy" => cur.credential_strategy = req.credential_strategy.clone(),
            "enabled" => cur.enabled = req.enabled,
            "description" => cur.description = req.description.clone(),
            "metadata" => cur.metadata = req.metadata.clone(),
            "allow_paths" => cur.allow_paths = req.allow_paths.clone(),
            "forward_headers" => cur.forward_headers = req.forward_headers.clone(),
            "proxy" => cur.proxy = req.proxy.clone(),
            "proxy_password" => cur.proxy_password = req.proxy_password.clone(),
            "ca_file" => cur.ca_file = req.ca_file.clone(),
            "client_cert_file" => cur.client_cert_file = req.client_cert_file.clone(),
            "client_key_file" => cur.client_key_file = req.client_key_file.clone(),
            p => return Err(bad_path(&what, p)),
        }
    }
    // A proxy changed to one without a user (or none) takes the stored password with it,
    // unless the same update sets one (which validation then refuses).
    let given = |f: &str| mask.iter().any(|m| m == f);
    if given("proxy")
        && !given("proxy_password")
        && url::Url::parse(&cur.proxy).map_or(true, |u| u.username().is_empty())
    {
        cur.proxy_password.clear();
    }
    Ok(())
}

pub fn merge_credential(
    cur: &mut pb::Credential,
    req: &pb::Credential,
    mask: &[String],
) -> Result<(), Error> {
    let what = format!("credential {}/{}", cur.provider, cur.name);
    if mask.is_empty() {
        return Err(empty_mask(&what));
    }
    for path in mask {
        match path.as_str() {
            "secret" => {
                if req.secret.is_empty() {
                    return Err(invalid(format!("{what}: secret must not be empty")));
                }
                cur.secret = req.secret.clone()
            }
            "weight" => cur.weight = req.weight,
            "enabled" => cur.enabled = req.enabled,
            "metadata" => cur.metadata = req.metadata.clone(),
            "description" => cur.description = req.description.clone(),
            p => return Err(bad_path(&what, p)),
        }
    }
    Ok(())
}

pub fn merge_model(cur: &mut pb::Model, req: &pb::Model, mask: &[String]) -> Result<(), Error> {
    let what = format!("model {}", cur.name);
    if mask.is_empty() {
        return Err(empty_mask(&what));
    }
    let rr = req.retry.unwrap_or_default();
    let ra = req.affinity.clone().unwrap_or_default();
    for path in mask {
        let r = cur.retry.get_or_insert_with(Default::default);
        let a = cur.affinity.get_or_insert_with(Default::default);
        match path.as_str() {
            "strategy" => cur.strategy = req.strategy.clone(),
            "retry" => cur.retry = Some(rr),
            "retry.max_retries" => r.max_retries = rr.max_retries,
            "retry.per_try_timeout_ms" => r.per_try_timeout_ms = rr.per_try_timeout_ms,
            "affinity" => cur.affinity = Some(ra.clone()),
            "affinity.kind" => a.kind = ra.kind.clone(),
            "affinity.header" => a.header = ra.header.clone(),
            "enabled" => cur.enabled = req.enabled,
            "description" => cur.description = req.description.clone(),
            "metadata" => cur.metadata = req.metadata.clone(),
            // The price is replaced whole (an absent one clears it).
            "price" => cur.price = req.price,
            "aliases" => cur.aliases = req.aliases.clone(),
            "default_max_tokens" => cur.default_max_tokens = req.default_max_tokens,
            p => return Err(bad_path(&what, p)),
        }
    }
    Ok(())
}

pub fn merge_backend(cur: &mut pb::Backend, req: &pb::Backend, mask: &[String]) -> Result<(), Error> {
    let what = format!("backend {}/{}", cur.model, cur.name);
    if mask.is_empty() {
        return Err(empty_mask(&what));
    }
    for path in mask {
        match path.as_str() {
            "provider" => cur.provider = req.provider.clone(),
            "upstream_model" => cur.upstream_model = req.upstream_model.clone(),
            "weight" => cur.weight = req.weight,
            "priority" => cur.priority = req.priority,
            "enabled" => cur.enabled = req.enabled,
            "price" => cur.price = req.price,
            p => return Err(bad_path(&what, p)),
        }
    }
    Ok(())
}

/// Key updates touch only the user-settable spec.
pub fn merge_key(cur: &mut ApiKeySpec, name: &str, req: &pb::ApiKey, mask: &[String]) -> Result<(), Error> {
    let what = format!("key {name}");
    if mask.is_empty() {
        return Err(empty_mask(&what));
    }
    for path in mask {
        match path.as_str() {
            "allowed_models" => {
                let s = key_spec_from_proto(name, &req.allowed_models, 0, "", None, false, "")?;
                cur.allowed_models = s.allowed_models;
            }
            "enabled" => {
                let en = req.enabled.unwrap_or(true);
                if en && cur.revoked {
                    return Err(Error::FailedPrecondition(format!(
                        "{what}: a revoked key cannot be enabled again"
                    )));
                }
                cur.enabled = en;
            }
            "expires_at_ms" => {
                if req.expires_at_ms < 0 {
                    return Err(invalid(format!("{what}: expires_at_ms must be >= 0")));
                }
                cur.expires_at_ms = req.expires_at_ms
            }
            "description" => cur.description = req.description.clone(),
            "allow_pin" => cur.allow_pin = req.allow_pin,
            "team" => {
                if !req.team.is_empty() {
                    validate_name(&format!("{what}: team"), &req.team)?;
                }
                cur.team = req.team.clone();
            }
            p => return Err(bad_path(&what, p)),
        }
    }
    Ok(())
}

pub fn worker_to_proto(w: &crate::watch::WorkerState) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.worker_id.clone(),
        connected: w.connections > 0,
        applied_version: w.applied_version,
        applied_hash: w.applied_hash.clone(),
        last_seen_ms: w.last_seen_ms,
        connected_at_ms: w.connected_at_ms,
        rejected_version: w.rejected_version,
        rejected_reason: w.rejected_reason.clone(),
        rejected_at_ms: w.rejected_at_ms,
        address: w.address.clone(),
        software_version: w.software_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(paths: &[&str], headers: &[&str]) -> pb::Provider {
        pb::Provider {
            name: "x".into(),
            kind: "openai".into(),
            base_url: "https://api.example.com/v1".into(),
            allow_paths: paths.iter().map(|s| s.to_string()).collect(),
            forward_headers: headers.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn err(p: &pb::Provider) -> String {
        match provider_from_proto(p) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    /// Aliases: kept in order, refused when empty, only `*`, a repeat or the model's own
    /// name; across models an alias may not be another model's name or alias.
    #[test]
    fn model_aliases_are_checked() {
        let model = |name: &str, aliases: &[&str]| pb::Model {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let m = model_from_proto(&model("haiku", &["claude-*-haiku-*", "claude-haiku"])).unwrap();
        assert_eq!(m.spec.aliases, ["claude-*-haiku-*", "claude-haiku"]);
        assert_eq!(model_to_proto(&m).aliases, m.spec.aliases);
        for bad in [&["" as &str][..], &["**"], &["a", "a"], &["haiku"], &["a b"]] {
            assert!(model_from_proto(&model("haiku", bad)).is_err(), "{bad:?}");
        }
        // An empty list is left out of the stored spec (and so of the snapshot hash).
        assert!(
            !serde_json::to_string(&model_from_proto(&model("x", &[])).unwrap().spec)
                .unwrap()
                .contains("aliases")
        );
        // `default_max_tokens`: kept, and 0 refused.
        let mut dm = model("x", &[]);
        dm.default_max_tokens = Some(2048);
        let m = model_from_proto(&dm).unwrap();
        assert_eq!(model_to_proto(&m).default_max_tokens, Some(2048));
        dm.default_max_tokens = Some(0);
        assert!(model_from_proto(&dm).is_err());
        let state = |ms: &[pb::Model]| ConfigState {
            providers: BTreeMap::new(),
            models: ms
                .iter()
                .map(|m| (m.name.clone(), model_from_proto(m).unwrap()))
                .collect(),
            keys: BTreeMap::new(),
            limits: BTreeMap::new(),
        };
        assert!(state(&[model("a", &["x", "y-*"]), model("b", &["z"])])
            .validate_references()
            .is_ok());
        assert!(state(&[model("a", &["b"]), model("b", &[])])
            .validate_references()
            .is_err());
        assert!(state(&[model("a", &["x"]), model("b", &["x"])])
            .validate_references()
            .is_err());
    }

    #[test]
    fn passthrough_settings_are_normalised() {
        let p = provider_from_proto(&provider(
            &["/v1/files", "/v1/batches", "/v1/files"],
            &["OpenAI-Project", "openai-organization", "openai-project"],
        ))
        .unwrap();
        assert_eq!(p.spec.allow_paths, ["/v1/batches", "/v1/files"]);
        assert_eq!(p.spec.forward_headers, ["openai-organization", "openai-project"]);
        let back = provider_to_proto(&p, Secrets::Redact);
        assert_eq!(back.allow_paths, p.spec.allow_paths);
        assert_eq!(back.forward_headers, p.spec.forward_headers);
    }

    #[test]
    fn passthrough_errors_name_the_entry() {
        assert_eq!(
            err(&provider(&["/v1/files", "/v1/../admin"], &[])),
            r#"provider x: allow_paths[1]: "/v1/../admin" must not contain `.` or `..` segments"#
        );
        for bad in [
            "/v1/files/%2e%2e",
            "/v2/x",
            "/v1/a//b",
            "/v1/a\\b",
            "/v1/a?b",
            "/v1/a*",
        ] {
            let m = err(&provider(&[bad], &[]));
            assert!(m.starts_with("provider x: allow_paths[0]: "), "{bad}: {m}");
        }
        let m = err(&provider(&[], &["openai-project", "bad header"]));
        assert!(m.starts_with("provider x: forward_headers[1]: "), "{m}");
        let m = err(&provider(&[], &["Authorization"]));
        assert!(m.starts_with("provider x: forward_headers[0]: "), "{m}");
        let mut p = provider(&[], &["x-jb-token"]);
        p.auth = Some(pb::AuthScheme {
            header: "X-JB-Token".into(),
            prefix: String::new(),
        });
        assert!(err(&p).contains("credential"), "{}", err(&p));
    }

    #[test]
    fn egress_fields_are_checked_and_the_password_goes_with_its_user() {
        let mut p = provider(&[], &[]);
        p.proxy = "http://egress@proxy.corp:3128".into();
        p.proxy_password = "pw-0123456789".into();
        p.ca_file = "/etc/ssl/ca.pem".into();
        let m = provider_from_proto(&p).unwrap();
        assert_eq!(m.spec.proxy_password.expose(), "pw-0123456789");
        let back = provider_to_proto(&m, Secrets::Redact);
        assert_eq!(back.proxy_password, "…6789");
        assert_eq!(back.ca_file, "/etc/ssl/ca.pem");
        assert_eq!(
            provider_to_proto(&m, Secrets::Clear).proxy_password,
            "pw-0123456789"
        );

        let err = |p: &pb::Provider| provider_from_proto(p).unwrap_err().to_string();
        let mut bad = p.clone();
        bad.proxy = "http://proxy.corp:3128".into();
        assert!(
            err(&bad).contains("proxy_password: needs a proxy URL with a user"),
            "{}",
            err(&bad)
        );
        bad.proxy = "socks5://proxy:1080".into();
        assert!(
            err(&bad).contains("provider x: proxy: scheme `socks5`"),
            "{}",
            err(&bad)
        );
        let mut bad = p.clone();
        bad.client_key_file = "/k.pem".into();
        assert!(err(&bad).contains("client_cert_file: client_cert_file and client_key_file go together"));

        // Clearing the proxy by mask clears its password too; `env` is fine.
        let mut cur = p.clone();
        let req = pb::Provider {
            proxy: "env".into(),
            ..Default::default()
        };
        merge_provider(&mut cur, &req, &["proxy".into()]).unwrap();
        assert!(cur.proxy_password.is_empty());
        assert!(provider_from_proto(&cur).is_ok());
    }

    #[test]
    fn masks_copy_the_new_fields() {
        let mut cur = provider(&["/v1/files"], &["openai-project"]);
        let req = provider(&["/v1/batches"], &[]);
        merge_provider(&mut cur, &req, &["allow_paths".into()]).unwrap();
        assert_eq!(cur.allow_paths, ["/v1/batches"]);
        assert_eq!(cur.forward_headers, ["openai-project"], "not in the mask");
        merge_provider(&mut cur, &req, &["forward_headers".into()]).unwrap();
        assert!(cur.forward_headers.is_empty());

        let mut spec = key_spec_from_proto("k", &[], 0, "", None, false, "").unwrap();
        let req = pb::ApiKey {
            allow_pin: true,
            ..Default::default()
        };
        merge_key(&mut spec, "k", &req, &["description".into()]).unwrap();
        assert!(!spec.allow_pin);
        merge_key(&mut spec, "k", &req, &["allow_pin".into()]).unwrap();
        assert!(spec.allow_pin);
    }

    #[test]
    fn prices_need_input_and_output_and_stay_in_range() {
        let p = |input, output| pb::Price {
            input,
            output,
            ..Default::default()
        };
        let err = |m: pb::Model| model_from_proto(&m).unwrap_err().to_string();
        let model = |price| pb::Model {
            name: "m".into(),
            price: Some(price),
            ..Default::default()
        };
        assert!(err(model(p(None, Some(1)))).contains("model m: price.input is required"));
        assert!(err(model(p(Some(1), None))).contains("model m: price.output is required"));
        assert!(err(model(p(Some(MAX_PRICE_NANO + 1), Some(1)))).contains("model m: price.input:"));
        let m = model_from_proto(&model(pb::Price {
            cache_write: Some(3750),
            ..p(Some(3000), Some(15_000))
        }))
        .unwrap();
        let want = Price {
            input: 3000,
            cached_input: None,
            cache_write: Some(3750),
            output: 15_000,
            reasoning: None,
        };
        assert_eq!(m.spec.price, Some(want));
        assert_eq!(price_to_proto(&want), model_to_proto(&m).price.unwrap());
        let b = pb::Backend {
            provider: "p".into(),
            price: Some(p(Some(1), None)),
            ..Default::default()
        };
        let e = backend_from_proto("m", &b).unwrap_err().to_string();
        assert!(e.contains("backend m/p: price.output is required"), "{e}");
    }
}
