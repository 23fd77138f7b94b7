//! The validated routing table a request reads: providers with their credentials and
//! upstream clients, models with their backends and selectors, and client keys by digest.
//! Built in full by `convert` before it is swapped in, so the swap cannot fail.
use std::{
    collections::HashSet,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use rustc_hash::FxHashMap;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::{
    balance::{Endpoint, EndpointState, Selector},
    limits::{LimitSet, LimitState},
    metrics::{BackendHandles, ModelHandles},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
    pub fn index(self) -> usize {
        match self {
            Self::OpenAi => 0,
            Self::Anthropic => 1,
        }
    }
}

/// The whole routing table for one config version.
#[derive(Debug)]
pub struct Routing {
    pub version: u64,
    pub hash: String,
    pub providers: Vec<Provider>,
    /// Looked up once per request with the client's model name: Fx, not SipHash (lookups
    /// of untrusted names never insert, so there is nothing to flood).
    pub models: FxHashMap<String, Model>,
    /// Sorted public model names (for `/v1/models`).
    pub model_names: Vec<String>,
    /// Other names models may be asked by (looked up only when no model has the name).
    pub aliases: Aliases,
    /// Client keys by SHA-256 digest of the plaintext.
    pub keys: FxHashMap<[u8; 32], ClientKey>,
    /// Every limit's live state (the lease task claims for them; `/metrics`).
    pub limits: Vec<Arc<LimitState>>,
}

#[derive(Debug)]
pub struct HealthProbe {
    pub interval: Duration,
    pub timeout: Duration,
    pub probe: ProbeKind,
    pub healthy_below: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    Models,
    Chat(String),
    Messages(String),
}

#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    /// `name` as a response header value (`x-switchyard-provider`).
    pub name_header: HeaderValue,
    pub kind: ProviderKind,
    /// Base URL without a trailing slash.
    pub base_url: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Option<Duration>,
    pub auth_header: HeaderName,
    pub static_headers: Vec<(HeaderName, HeaderValue)>,
    /// API paths this provider forwards beyond its kind's default inference paths
    /// (`proxy::path_allowed`): exact paths, or prefixes written with a trailing `/*`.
    pub extra_paths: Vec<String>,
    /// Account-selecting client headers (`OpenAI-Organization`, …) this provider lets
    /// through; every other one is dropped (`proxy::ACCOUNT_HEADERS`).
    pub forward_headers: Vec<HeaderName>,
    pub health: Option<HealthProbe>,
    pub enabled: bool,
    pub credentials: Vec<Credential>,
    /// One selectable endpoint per credential, same order.
    pub cred_endpoints: Vec<Endpoint>,
    pub cred_selector: Selector,
    /// The upstream client: the origin's pool of keep-alive connections and the base path.
    pub client: crate::upstream::Client,
    /// Unix ms of the last active probe (0 = never).
    pub last_check_ms: AtomicU64,
}

impl Provider {
    /// Whether the worker sets this request header itself (the credential's header or a
    /// static header), so that a client's header of the same name is not forwarded.
    pub fn sets_header(&self, name: &HeaderName) -> bool {
        *name == self.auth_header || self.static_headers.iter().any(|(n, _)| n == name)
    }
}

#[derive(Debug)]
pub struct Credential {
    pub name: Arc<str>,
    /// The full header value (`Bearer sk-...`), marked sensitive.
    pub auth_value: HeaderValue,
    pub enabled: bool,
    pub state: Arc<EndpointState>,
    /// Identity used to keep `state` across swaps.
    pub identity: Arc<str>,
    /// Makes and reads the gateway's response ids for this credential (`respid`).
    pub id_key: crate::respid::IdKey,
    /// The provider account's own limits (`credential:PROVIDER/NAME`); `None`: none.
    pub limits: Option<LimitSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    None,
    Header(HeaderName),
    User,
}

#[derive(Debug)]
pub struct Model {
    pub name: Arc<str>,
    /// Metric series of this model, created on first use.
    pub metrics: Arc<ModelHandles>,
    pub max_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub affinity: Affinity,
    pub enabled: bool,
    /// `max_tokens` for a request translated to an Anthropic backend whose client set
    /// none (`proxy::translate`).
    pub default_max_tokens: u64,
    /// Backends reachable from each client dialect (`ProviderKind::index`): those of
    /// the dialect's kind, then the other kind's, reached by translation.
    pub routes: [Option<ModelRoute>; 2],
    /// The model's limits (`model:NAME`), every key together; `None`: none.
    pub limits: Option<LimitSet>,
}

#[derive(Debug)]
pub struct ModelRoute {
    /// `backends[..native]` are of the route's own kind (passthrough);
    /// `backends[native..]` of the other kind (translated: `proxy::translate`). Each
    /// backend is native in exactly one of its model's routes: listings walk
    /// [`ModelRoute::native_backends`] so that none is counted twice.
    pub native: usize,
    pub backends: Vec<Backend>,
    pub endpoints: Vec<Endpoint>,
    pub selector: Selector,
}

impl ModelRoute {
    /// The backends of the route's own kind (each backend once per model across its routes).
    pub fn native_backends(&self) -> &[Backend] {
        &self.backends[..self.native]
    }
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: Arc<str>,
    /// Metric series of this backend, created on first use.
    pub metrics: Arc<BackendHandles>,
    /// `name` as a response header value (`x-switchyard-backend`).
    pub name_header: HeaderValue,
    /// Index into `Routing::providers`.
    pub provider: usize,
    pub upstream_model: String,
    /// The upstream model as a JSON string literal, ready to splice.
    pub upstream_model_json: Bytes,
    pub state: Arc<EndpointState>,
    /// Identity used to keep `state` across swaps.
    pub identity: Arc<str>,
    /// The backend's price, else its model's; `None` = unpriced.
    pub price: Option<crate::account::Price>,
}

#[derive(Debug)]
pub struct ClientKey {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub digest: [u8; 32],
    /// `None` = all models.
    pub allowed_models: Option<HashSet<String>>,
    pub enabled: bool,
    /// Unix ms; 0 = never.
    pub expires_at_ms: i64,
    /// May pin a backend with `x-switchyard-backend` (off unless granted).
    pub may_pin: bool,
    /// The key's team (`None`: none).
    pub team: Option<Arc<str>>,
    /// The key's own limits and its team's, resolved once per snapshot; `None`: none, and
    /// its requests do no limit work at all.
    pub limits: Option<LimitSet>,
}

impl ClientKey {
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// Models' aliases: exact ones, and patterns where `*` stands for any run of characters,
/// in model-name order (the first that matches wins).
#[derive(Debug, Default)]
pub struct Aliases {
    pub exact: FxHashMap<String, String>,
    pub patterns: Vec<(String, String)>,
}

impl Aliases {
    /// The model a name that is no model's own goes to.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        if let Some(m) = self.exact.get(name) {
            return Some(m);
        }
        self.patterns
            .iter()
            .find(|(p, _)| glob_match(p.as_bytes(), name.as_bytes()))
            .map(|(_, m)| m.as_str())
    }
}

/// `*` matches any run of bytes (none included); every other byte itself. Linear in
/// practice: backtracks only to the last `*`.
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Live endpoint states by identity, and limit states by name, carried from one
/// routing table into the next. Identities are shared `Arc<str>`s (a clone is a count)
/// and come from the operator's config, not from clients, so Fx hashing has nothing to
/// fear.
#[derive(Debug, Default)]
pub struct States {
    pub endpoints: FxHashMap<Arc<str>, Arc<EndpointState>>,
    /// Kept only while the limit's definition is unchanged (`convert`).
    pub limits: FxHashMap<Arc<str>, Arc<LimitState>>,
}

impl Routing {
    /// Every live endpoint state by identity, to carry over into the next snapshot.
    pub fn states(&self) -> States {
        let n = self.providers.iter().map(|p| p.credentials.len()).sum::<usize>()
            + self
                .models
                .values()
                .flat_map(|m| m.routes.iter().flatten())
                .map(|r| r.native)
                .sum::<usize>();
        let mut out = FxHashMap::with_capacity_and_hasher(n, Default::default());
        for p in &self.providers {
            for c in &p.credentials {
                out.insert(c.identity.clone(), c.state.clone());
            }
        }
        for m in self.models.values() {
            for r in m.routes.iter().flatten() {
                for b in r.native_backends() {
                    out.insert(b.identity.clone(), b.state.clone());
                }
            }
        }
        States {
            endpoints: out,
            limits: self
                .limits
                .iter()
                .map(|l| (l.def.name.clone(), l.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run() {
        for (p, s, want) in [
            ("claude-*-haiku-*", "claude-3-5-haiku-20241022", true),
            ("claude-*-haiku-*", "claude-haiku-4-5", false),
            ("claude-*-haiku-*", "claude--haiku-", true),
            ("*", "", true),
            ("a*b*c", "abbbc", true),
            ("a*b*c", "abbbcx", false),
            ("exact", "exact", true),
            ("exact", "exac", false),
            ("*-latest", "gpt-4o-latest", true),
        ] {
            assert_eq!(glob_match(p.as_bytes(), s.as_bytes()), want, "{p} {s}");
        }
    }

    #[test]
    fn exact_aliases_first_then_patterns_in_order() {
        let mut a = Aliases::default();
        a.exact.insert("claude-3-5-haiku-latest".into(), "fast".into());
        a.patterns.push(("claude-*-haiku-*".into(), "haiku".into()));
        a.patterns.push(("claude-*".into(), "any".into()));
        assert_eq!(a.resolve("claude-3-5-haiku-latest"), Some("fast"));
        assert_eq!(a.resolve("claude-3-5-haiku-20241022"), Some("haiku"));
        assert_eq!(a.resolve("claude-sonnet-4-5"), Some("any"));
        assert_eq!(a.resolve("gpt-4o"), None);
    }
}
