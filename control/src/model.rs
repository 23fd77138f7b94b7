//! Domain types of the control plane's config, their validation rules, and the diff
//! between two whole configs (used by every write, not only by Apply).
//!
//! Settings live in `*Spec` structs whose serde field names are the proto field paths,
//! so the JSON stored in the `spec` column and the field names in a diff (`health.interval_ms`)
//! come from one definition.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::Error;

/// The whole routing config, keyed by name (BTreeMaps keep every output sorted).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigState {
    pub providers: BTreeMap<String, Provider>,
    pub models: BTreeMap<String, Model>,
    pub keys: BTreeMap<String, ApiKey>,
    pub limits: BTreeMap<String, Limit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
}

impl ProviderKind {
    pub const ALL: &'static str = "openai, anthropic";
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "openai" => Some(Self::Openai),
            "anthropic" => Some(Self::Anthropic),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }
    pub fn default_probe(self) -> &'static str {
        match self {
            Self::Openai => "models",
            Self::Anthropic => "messages:claude-3-5-haiku-latest",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStrategy {
    RoundRobin,
    Random,
}

impl CredentialStrategy {
    pub const ALL: &'static str = "round_robin, random";
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round_robin" => Some(Self::RoundRobin),
            "random" => Some(Self::Random),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    Random,
    WeightedRandom,
    WeightedRoundRobin,
    LeastConnections,
    LeastLatency,
    Failover,
}

impl Strategy {
    pub const ALL: &'static str = "round_robin, random, weighted_random, weighted_round_robin, least_connections, least_latency, failover";
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "round_robin" => Self::RoundRobin,
            "random" => Self::Random,
            "weighted_random" => Self::WeightedRandom,
            "weighted_round_robin" => Self::WeightedRoundRobin,
            "least_connections" => Self::LeastConnections,
            "least_latency" => Self::LeastLatency,
            "failover" => Self::Failover,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::WeightedRandom => "weighted_random",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastConnections => "least_connections",
            Self::LeastLatency => "least_latency",
            Self::Failover => "failover",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityKind {
    None,
    Header,
    User,
}

impl AffinityKind {
    pub const ALL: &'static str = "none, header, user";
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "header" => Some(Self::Header),
            "user" => Some(Self::User),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Header => "header",
            Self::User => "user",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthScheme {
    pub header: String,
    pub prefix: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub enabled: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub probe: String,
    pub healthy_below: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    pub base_url: String,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub total_timeout_ms: u64,
    pub auth: AuthScheme,
    pub headers: BTreeMap<String, String>,
    pub health: HealthCheck,
    pub credential_strategy: CredentialStrategy,
    pub enabled: bool,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    /// Paths forwarded beyond the kind's inference endpoints (sorted, deduplicated).
    /// Absent from specs stored before it existed, and left out when empty so that
    /// their JSON and the snapshot hash stay the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_paths: Vec<String>,
    /// Account-selecting client headers let through (lowercase, sorted, deduplicated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
    /// Outbound proxy: empty (direct), `env`, or `http://[user@]host[:port]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proxy: String,
    /// The proxy user's password. Not in the spec's JSON: the store seals it under the
    /// master key into the row's `proxy_password` member (`store::provider_spec_json`).
    #[serde(skip)]
    pub proxy_password: crate::secret::Secret,
    /// PEM files on the worker host (absolute paths): the upstream's CAs (replacing the
    /// public roots), and a client certificate and key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_file: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_cert_file: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_key_file: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Provider {
    pub name: String,
    pub spec: ProviderSpec,
    pub credentials: BTreeMap<String, Credential>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSpec {
    pub weight: u32,
    pub enabled: bool,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Credential {
    pub name: String,
    pub secret: Secret,
    pub spec: CredentialSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub per_try_timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    pub kind: AffinityKind,
    pub header: String,
}

/// What one token of each class costs, in nano-units of the currency per token (=
/// thousandths of a unit per million tokens). A class left unset falls back (cached input
/// and cache write to input, reasoning to output); the worker applies the fallbacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub input: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<u64>,
    pub output: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<u64>,
}

/// The largest price accepted: 10^9 nano-units per token (1 000 000 units per million
/// tokens), so a record's cost cannot overflow before 9.2 billion tokens of one class.
pub const MAX_PRICE_NANO: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub strategy: Strategy,
    pub retry: RetryPolicy,
    pub affinity: Affinity,
    pub enabled: bool,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    /// The price of every backend that sets none; `None` = those are unpriced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// Other names (exact, or patterns with `*`) clients may ask this model by. Left out of
    /// the stored spec (and the snapshot hash) when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// `max_tokens` for a translated request whose client set none (`None`: the worker's
    /// default). Left out of the stored spec when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: String,
    pub spec: ModelSpec,
    pub backends: BTreeMap<String, Backend>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub provider: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: i32,
    pub enabled: bool,
    /// The price of `upstream_model` on this provider; `None` = the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub name: String,
    pub spec: BackendSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeySpec {
    pub allowed_models: Vec<String>,
    pub enabled: bool,
    pub revoked: bool,
    pub expires_at_ms: i64,
    pub description: String,
    /// May pin a backend with `x-switchyard-backend`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_pin: bool,
    /// The team the key belongs to; empty = none. Left out of the stored spec (and the
    /// snapshot hash) when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the plaintext key; the plaintext is never stored.
    pub key_hash: String,
    pub prefix: String,
    pub spec: ApiKeySpec,
    pub created_at_ms: i64,
}

impl ApiKey {
    /// Usable right now: enabled, not revoked, not expired.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.spec.enabled
            && !self.spec.revoked
            && (self.spec.expires_at_ms == 0 || self.spec.expires_at_ms > now_ms)
    }
}

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
    Concurrency,
    Spend,
}

impl LimitKind {
    pub const ALL: &'static str = "requests, tokens, input_tokens, output_tokens, concurrency, spend";
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "requests" => Self::Requests,
            "tokens" => Self::Tokens,
            "input_tokens" => Self::InputTokens,
            "output_tokens" => Self::OutputTokens,
            "concurrency" => Self::Concurrency,
            "spend" => Self::Spend,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
            Self::Concurrency => "concurrency",
            Self::Spend => "spend",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    Enforce,
    Observe,
}

impl LimitMode {
    pub const ALL: &'static str = "enforce, observe";
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enforce" => Some(Self::Enforce),
            "observe" => Some(Self::Observe),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Observe => "observe",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOutage {
    Closed,
    Open,
}

impl OnOutage {
    pub const ALL: &'static str = "closed, open";
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "closed" => Some(Self::Closed),
            "open" => Some(Self::Open),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
        }
    }
}

/// What a limit applies to, parsed from `key:NAME`, `team:NAME`, `model:NAME` or
/// `credential:PROVIDER/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitScope {
    Key(String),
    Team(String),
    Model(String),
    Credential(String, String),
}

impl LimitScope {
    pub const FORMS: &'static str = "key:NAME, team:NAME, model:NAME or credential:PROVIDER/NAME";
    /// Parse and check the names (errors without a prefix; the caller names the field).
    pub fn parse(s: &str) -> Result<LimitScope, String> {
        let bad = || format!("{s:?} must be {}", Self::FORMS);
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let name_ok = |n: &str| validate_name("", n).is_ok();
        let scope = match kind {
            "key" => LimitScope::Key(rest.to_string()),
            "team" => LimitScope::Team(rest.to_string()),
            "model" => LimitScope::Model(rest.to_string()),
            "credential" => {
                let (p, c) = rest.split_once('/').ok_or_else(bad)?;
                if !name_ok(p) || !name_ok(c) {
                    return Err(format!(
                        "{s:?}: provider and credential names must match [a-z0-9][a-z0-9._-]{{0,62}}"
                    ));
                }
                return Ok(LimitScope::Credential(p.to_string(), c.to_string()));
            }
            _ => return Err(bad()),
        };
        if !name_ok(rest) {
            return Err(format!("{s:?}: the name must match [a-z0-9][a-z0-9._-]{{0,62}}"));
        }
        Ok(scope)
    }

    /// Whether the object the scope names exists in `s` (a team always does: it exists
    /// while a key names it, and a team's limit may come before its first key).
    pub fn missing_in(&self, s: &ConfigState) -> Option<String> {
        match self {
            LimitScope::Key(k) if !s.keys.contains_key(k) => Some(format!("key {k:?} does not exist")),
            LimitScope::Model(m) if !s.models.contains_key(m) => Some(format!("model {m:?} does not exist")),
            LimitScope::Credential(p, c)
                if !s
                    .providers
                    .get(p)
                    .is_some_and(|pr| pr.credentials.contains_key(c)) =>
            {
                Some(format!("credential {p}/{c} does not exist"))
            }
            _ => None,
        }
    }
}

/// A limit's definition. `scope` is kept as written (it was checked by [`LimitScope::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    pub scope: String,
    pub kind: LimitKind,
    /// `None` only for `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<switchyard_common::window::Window>,
    pub amount: u64,
    pub mode: LimitMode,
    pub on_outage: OnOutage,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl LimitSpec {
    /// Whether consumption counted under `self` still means the same under `other`
    /// (same scope, kind and window): if not, the ledger starts again.
    pub fn same_meter(&self, other: &LimitSpec) -> bool {
        self.scope == other.scope && self.kind == other.kind && self.window == other.window
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub name: String,
    pub spec: LimitSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Check an object name against `[a-z0-9][a-z0-9._-]{0,62}`. `what` prefixes the error.
pub fn validate_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what}: name {name:?} must match [a-z0-9][a-z0-9._-]{{0,62}}"
        )))
    }
}

impl ConfigState {
    /// Cross-object rules: every backend names an existing provider.
    pub fn validate_references(&self) -> Result<(), Error> {
        // An exact alias names one model; the same pattern on two models is ambiguous.
        let mut taken: BTreeMap<&str, &str> = BTreeMap::new();
        for m in self.models.values() {
            for a in &m.spec.aliases {
                if let Some(other) = self.models.get(a.as_str()).map(|o| o.name.as_str()) {
                    return Err(Error::InvalidArgument(format!(
                        "model {}: alias {a:?} is the name of model {other}",
                        m.name
                    )));
                }
                if let Some(other) = taken.insert(a, &m.name) {
                    return Err(Error::InvalidArgument(format!(
                        "model {}: alias {a:?} is also an alias of model {other}",
                        m.name
                    )));
                }
            }
        }
        for m in self.models.values() {
            for b in m.backends.values() {
                if !self.providers.contains_key(&b.spec.provider) {
                    return Err(Error::InvalidArgument(format!(
                        "backend {}/{}: provider {:?} does not exist",
                        m.name, b.name, b.spec.provider
                    )));
                }
            }
        }
        for l in self.limits.values() {
            let missing = LimitScope::parse(&l.spec.scope)
                .map(|s| s.missing_in(self))
                .unwrap_or_else(Some);
            if let Some(why) = missing {
                return Err(Error::InvalidArgument(format!(
                    "limit {}: scope {:?}: {why}",
                    l.name, l.spec.scope
                )));
            }
        }
        Ok(())
    }

    /// Backends (`model/backend`) that use `provider`.
    pub fn backends_using(&self, provider: &str) -> Vec<String> {
        self.models
            .values()
            .flat_map(|m| {
                m.backends
                    .values()
                    .filter(|b| b.spec.provider == provider)
                    .map(move |b| format!("{}/{}", m.name, b.name))
            })
            .collect()
    }
}

/// One difference between two configs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: &'static str,
    pub name: String,
    pub action: Action,
    pub fields: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// Field paths whose values differ between two specs (one level of nesting: `health.interval_ms`).
fn spec_fields<T: Serialize>(a: &T, b: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["spec".into()];
    };
    let mut out = Vec::new();
    for (k, va) in &a {
        let vb = b.get(k);
        if Some(va) == vb {
            continue;
        }
        match (va, vb) {
            (serde_json::Value::Object(oa), Some(serde_json::Value::Object(ob))) => {
                for (k2, v2) in oa {
                    if ob.get(k2) != Some(v2) {
                        out.push(format!("{k}.{k2}"));
                    }
                }
            }
            _ => out.push(k.clone()),
        }
    }
    // Fields left out of `a` when empty (`skip_serializing_if`) but set in `b`.
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out
}

fn diff_map<T>(
    kind: &'static str,
    prefix: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    fields: impl Fn(&T, &T) -> Vec<String>,
    out: &mut Vec<Change>,
) {
    let name = |n: &str| {
        if prefix.is_empty() {
            n.to_string()
        } else {
            format!("{prefix}/{n}")
        }
    };
    for (k, n) in new {
        match old.get(k) {
            None => out.push(Change {
                kind,
                name: name(k),
                action: Action::Create,
                fields: vec![],
            }),
            Some(o) => {
                let f = fields(o, n);
                if !f.is_empty() {
                    out.push(Change {
                        kind,
                        name: name(k),
                        action: Action::Update,
                        fields: f,
                    });
                }
            }
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push(Change {
                kind,
                name: name(k),
                action: Action::Delete,
                fields: vec![],
            });
        }
    }
}

/// Everything that differs from `old` to `new`, ignoring timestamps. Nested objects of a
/// deleted parent are listed too, because they are deleted with it.
pub fn diff(old: &ConfigState, new: &ConfigState) -> Vec<Change> {
    let mut out = Vec::new();
    diff_map(
        "provider",
        "",
        &old.providers,
        &new.providers,
        |a, b| spec_fields(&a.spec, &b.spec),
        &mut out,
    );
    let empty_c = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> =
        old.providers.keys().chain(new.providers.keys()).collect();
    for p in names {
        let o = old.providers.get(p).map_or(&empty_c, |p| &p.credentials);
        let n = new.providers.get(p).map_or(&empty_c, |p| &p.credentials);
        diff_map(
            "credential",
            p,
            o,
            n,
            |a, b| {
                let mut f = spec_fields(&a.spec, &b.spec);
                if a.secret != b.secret {
                    f.insert(0, "secret".into());
                }
                f
            },
            &mut out,
        );
    }
    diff_map(
        "model",
        "",
        &old.models,
        &new.models,
        |a, b| spec_fields(&a.spec, &b.spec),
        &mut out,
    );
    let empty_b = BTreeMap::new();
    let names: std::collections::BTreeSet<&String> = old.models.keys().chain(new.models.keys()).collect();
    for m in names {
        let o = old.models.get(m).map_or(&empty_b, |m| &m.backends);
        let n = new.models.get(m).map_or(&empty_b, |m| &m.backends);
        diff_map("backend", m, o, n, |a, b| spec_fields(&a.spec, &b.spec), &mut out);
    }
    diff_map(
        "key",
        "",
        &old.keys,
        &new.keys,
        |a, b| {
            let mut f = spec_fields(&a.spec, &b.spec);
            if a.key_hash != b.key_hash || a.id != b.id {
                f.push("key_hash".into());
            }
            f
        },
        &mut out,
    );
    diff_map(
        "limit",
        "",
        &old.limits,
        &new.limits,
        |a, b| spec_fields(&a.spec, &b.spec),
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("x", "gpt-4o.mini_1").is_ok());
        assert!(validate_name("x", "-a").is_err());
        assert!(validate_name("x", "A").is_err());
        assert!(validate_name("x", "").is_err());
        assert!(validate_name("x", &"a".repeat(63)).is_ok());
        assert!(validate_name("x", &"a".repeat(64)).is_err());
    }

    #[test]
    fn nested_field_paths() {
        let a = HealthCheck {
            enabled: true,
            interval_ms: 1,
            timeout_ms: 2,
            probe: "models".into(),
            healthy_below: 500,
        };
        let mut b = a.clone();
        b.interval_ms = 5;
        #[derive(Serialize)]
        struct W {
            health: HealthCheck,
            weight: u32,
        }
        let f = spec_fields(&W { health: a, weight: 1 }, &W { health: b, weight: 2 });
        assert_eq!(f, vec!["health.interval_ms", "weight"]);
    }

    /// Settings left out of the stored JSON while empty still show in a diff, both ways.
    #[test]
    fn fields_skipped_when_empty_are_diffed() {
        let a = ApiKeySpec {
            allowed_models: vec![],
            enabled: true,
            revoked: false,
            expires_at_ms: 0,
            description: String::new(),
            allow_pin: false,
            team: String::new(),
        };
        let b = ApiKeySpec {
            allow_pin: true,
            ..a.clone()
        };
        assert_eq!(spec_fields(&a, &b), vec!["allow_pin"]);
        assert_eq!(spec_fields(&b, &a), vec!["allow_pin"]);
        // A spec stored before the field existed reads as the default.
        let old =
            r#"{"allowed_models":[],"enabled":true,"revoked":false,"expires_at_ms":0,"description":""}"#;
        assert_eq!(serde_json::from_str::<ApiKeySpec>(old).unwrap(), a);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            old,
            "unchanged JSON, unchanged hash"
        );
    }
}
