//! The command-line grammar (clap derive). Parsing only: no I/O happens here.
//!
//! Update subcommands take every field as an `Option`: a flag the user gave becomes a path
//! in the RPC's `update_mask`, so fields they did not mention are never overwritten.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default control-plane address (the `switchyard-control` default gRPC listener).
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:50051";

/// Operate a Switchyard gateway: providers, credentials, models, backends, client keys,
/// declarative apply/export, and the state of workers.
#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    propagate_version = true,
    after_help = "Examples:\n  switchyard providers add openai --kind openai --base-url https://api.openai.com/v1\n  \
                  switchyard credentials add openai --secret-env OPENAI_API_KEY\n  \
                  switchyard models add gpt-4o --strategy least_latency\n  \
                  switchyard backends add gpt-4o --provider openai --upstream-model gpt-4o-2024-08-06\n  \
                  switchyard keys create team-a --models gpt-4o --expires 30d\n  \
                  switchyard apply -f switchyard.toml --dry-run"
)]
pub struct Cli {
    /// Control-plane gRPC URL [env: SWITCHYARD_CONTROL_URL] [default: http://127.0.0.1:50051].
    //
    // The environment is read in `control_url`, not by clap: clap lists an argument that
    // came from the environment in the usage line of its errors, as if the user had to
    // type it (`Usage: switchyard providers add --kind <KIND> ... --control <CONTROL>
    // --token <TOKEN> <NAME>`), and README has everyone export these two.
    #[arg(long, global = true, help_heading = "Global options", value_name = "URL")]
    pub control: Option<String>,

    /// Admin token, sent as `authorization: Bearer <token>` [env: SWITCHYARD_ADMIN_TOKEN].
    #[arg(long, global = true, help_heading = "Global options", value_name = "TOKEN")]
    pub token: Option<String>,

    /// Read the admin token from this file, so it does not show in `ps`
    /// [env: SWITCHYARD_ADMIN_TOKEN_FILE].
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// PEM CA that signs control's certificate, for an `https://` URL (default: the
    /// public web roots) [env: SWITCHYARD_CONTROL_CA].
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub control_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for a control plane that requires mTLS
    /// [env: SWITCHYARD_CLIENT_CERT].
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub client_cert: Option<std::path::PathBuf>,

    /// PEM key of `--client-cert` [env: SWITCHYARD_CLIENT_KEY].
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub client_key: Option<std::path::PathBuf>,

    /// Output format. `json` is complete and stable, for scripts.
    #[arg(short, long, global = true, help_heading = "Global options", value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--control`, else `SWITCHYARD_CONTROL_URL`, else [`DEFAULT_CONTROL_URL`].
    pub fn control_url(&self) -> String {
        self.control
            .clone()
            .or_else(|| env_value("SWITCHYARD_CONTROL_URL"))
            .unwrap_or_else(|| DEFAULT_CONTROL_URL.to_string())
    }

    /// `--token`, else `--token-file`, else `SWITCHYARD_ADMIN_TOKEN`, else
    /// `SWITCHYARD_ADMIN_TOKEN_FILE` (a file's trailing newline removed).
    pub fn admin_token(&self) -> std::io::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map(|t| Some(t.trim_end().to_string()))
                .map_err(|e| std::io::Error::new(e.kind(), format!("token file {}: {e}", p.display())))
        };
        if let Some(f) = &self.token_file {
            return read(f);
        }
        if let Some(t) = env_value("SWITCHYARD_ADMIN_TOKEN") {
            return Ok(Some(t));
        }
        match env_value("SWITCHYARD_ADMIN_TOKEN_FILE") {
            Some(f) => read(std::path::Path::new(&f)),
            None => Ok(None),
        }
    }

    /// TLS to control, from the flags, else the environment.
    pub fn control_tls(&self) -> switchyard_proto::channel::ClientTls {
        let pick = |flag: &Option<std::path::PathBuf>, env: &str| {
            flag.clone().or_else(|| env_value(env).map(Into::into))
        };
        switchyard_proto::channel::ClientTls {
            ca: pick(&self.control_ca, "SWITCHYARD_CONTROL_CA"),
            cert: pick(&self.client_cert, "SWITCHYARD_CLIENT_CERT"),
            key: pick(&self.client_key, "SWITCHYARD_CLIENT_KEY"),
        }
    }
}

/// A set, non-empty environment variable (what clap's `env` treats as given).
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upstream APIs (OpenAI-compatible or Anthropic) and how to reach them.
    #[command(subcommand)]
    Providers(ProvidersCmd),
    /// Secrets (API keys, JWTs) that a provider spreads traffic over.
    #[command(subcommand, visible_alias = "tokens")]
    Credentials(CredentialsCmd),
    /// Public model names that clients send, with their routing strategy.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// The (provider, upstream model) targets a model routes to.
    #[command(subcommand)]
    Backends(BackendsCmd),
    /// Client API keys (`sk-sy-...`) that callers of the gateway present.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Quotas on requests, tokens, concurrency or spend per key, team, model or
    /// credential, held across the fleet; `limits` lists them with their consumption.
    Limits(crate::limits::LimitsArgs),
    /// Apply a declarative TOML document (the format `export` prints) and print the diff.
    Apply(ApplyArgs),
    /// Print the whole configuration as TOML that `apply` accepts.
    Export(ExportArgs),
    /// Workers known to the control plane.
    #[command(subcommand)]
    Workers(WorkersCmd),
    /// Control-plane version, store and how many workers are in sync.
    Status,
    /// Requests, errors, tokens and latency that workers reported (e.g. `--since 1h --by key`).
    Usage(crate::usage::UsageArgs),
    /// What requests cost, by key, model, backend or UTC day (e.g. `--since 30d --by day`).
    Spend(crate::usage::SpendArgs),
    /// The default price table shipped with the CLI (`apply --default-prices` uses it).
    Prices,
    /// Backend and credential health as the fleet sees it; `health history TARGET`.
    Health(crate::usage::HealthArgs),
    /// Certificates for running control and workers over mTLS (`certs init DIR`).
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Print a shell completion script (e.g. `switchyard completions bash > /etc/bash_completion.d/switchyard`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run a whole gateway in one process: control plane (SQLite under --data-dir), one
    /// worker, and with --demo a mock upstream. Prints the URL, keys and a curl line.
    Up(crate::up::UpArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Write a private CA, control's certificate and client certificates (keys 0600),
    /// and print the flags that use them.
    Init(crate::certs::CertsInitArgs),
}

// ---------------------------------------------------------------------------
// providers
// ---------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum ProvidersCmd {
    /// Register a provider.
    Add(Box<ProviderAdd>),
    /// List providers.
    #[command(visible_alias = "ls")]
    List,
    /// Show one provider with its credentials.
    Get {
        /// Provider name.
        name: String,
    },
    /// Change the given fields of a provider; others stay as they are.
    Update(Box<ProviderUpdate>),
    /// Delete a provider and its credentials (fails while backends use it).
    #[command(visible_alias = "rm")]
    Remove {
        /// Provider name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ProviderAdd {
    /// Unique name, `[a-z0-9][a-z0-9._-]{0,62}`.
    pub name: String,
    /// API dialect: `openai` (any OpenAI-compatible API) or `anthropic`.
    #[arg(long)]
    pub kind: String,
    /// For `openai` include the version path (https://api.openai.com/v1); for `anthropic` the host only.
    #[arg(long)]
    pub base_url: String,
    #[command(flatten)]
    pub common: ProviderCommon,
    /// Create it disabled (no traffic until `providers update NAME --enable`).
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct ProviderUpdate {
    /// Provider name.
    pub name: String,
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub base_url: Option<String>,
    #[command(flatten)]
    pub common: ProviderCommon,
    /// Send traffic to it again.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Stop sending traffic to it.
    #[arg(long)]
    pub disable: bool,
}

/// Provider settings shared by `add` and `update`.
#[derive(Debug, Args)]
pub struct ProviderCommon {
    /// Time to response headers (e.g. `60s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// TCP/TLS connect timeout (e.g. `5s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Longest gap between stream chunks (e.g. `60s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Limit on the whole request including streaming (`0s` = none).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub total_timeout: Option<Duration>,
    /// How requests are spread over credentials: `round_robin` or `random`.
    #[arg(long)]
    pub credential_strategy: Option<String>,
    /// Header that carries the credential (default: `authorization` for openai, `x-api-key` for anthropic).
    #[arg(long)]
    pub auth_header: Option<String>,
    /// Prefix put before the credential in that header (e.g. `Bearer `).
    #[arg(long)]
    pub auth_prefix: Option<String>,
    /// Extra static header sent upstream, `K=V` (repeatable; on update the given set replaces the old one).
    #[arg(long = "header", value_name = "K=V", value_parser = parse_kv)]
    pub headers: Vec<(String, String)>,
    /// Free-form metadata, `K=V` (repeatable; on update the given set replaces the old one).
    #[arg(long = "metadata", value_name = "K=V", value_parser = parse_kv)]
    pub metadata: Vec<(String, String)>,
    /// API path forwarded beyond the kind's inference endpoints: exact (`/v1/files`) or a
    /// prefix with a trailing `/*` (`/v1/fine_tuning/*`: it and everything below).
    /// Repeatable; on update the given set replaces the old one and `--allow-path ''`
    /// clears it.
    #[arg(long = "allow-path", value_name = "PATH")]
    pub allow_paths: Vec<String>,
    /// Account-selecting client header let through (`openai-organization`, …; dropped by
    /// default). Repeatable; on update the given set replaces the old one and
    /// `--forward-header ''` clears it.
    #[arg(long = "forward-header", value_name = "NAME")]
    pub forward_headers: Vec<String>,
    /// Outbound HTTP proxy for this provider: `http://[user@]host[:port]`, `env` (the
    /// worker's HTTPS_PROXY/HTTP_PROXY/NO_PROXY), or `''` (direct).
    #[arg(long, value_name = "URL|env")]
    pub proxy: Option<String>,
    /// The proxy user's password, from this environment variable (stored encrypted).
    #[arg(long, value_name = "VAR", conflicts_with = "proxy_password_file")]
    pub proxy_password_env: Option<String>,
    /// The proxy user's password, from this file.
    #[arg(long, value_name = "PATH")]
    pub proxy_password_file: Option<std::path::PathBuf>,
    /// PEM file on the worker host with the CAs the upstream's certificate chains to; it
    /// replaces the public web roots for this provider (`''` clears).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<String>,
    /// PEM client certificate on the worker host, for upstreams that require mTLS
    /// (with `--client-key-file`; `''` clears). Not `--client-cert`, the CLI's own to control.
    #[arg(long, value_name = "PATH")]
    pub client_cert_file: Option<String>,
    /// PEM private key of `--client-cert-file`, on the worker host.
    #[arg(long, value_name = "PATH")]
    pub client_key_file: Option<String>,
    /// Free text shown in `get` and `list`.
    #[arg(long)]
    pub description: Option<String>,
    /// Turn active health checks on or off.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off, conflicts_with = "no_health")]
    pub health: Option<bool>,
    /// Same as `--health off`.
    #[arg(long)]
    pub no_health: bool,
    /// Health probe: `models` (GET {base}/models), `chat:MODEL` or `messages:MODEL`.
    #[arg(long, value_parser = parse_probe)]
    pub health_probe: Option<String>,
    /// Time between probes (e.g. `30s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_interval: Option<Duration>,
    /// Probe timeout (e.g. `10s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub health_timeout: Option<Duration>,
    /// A probe answer with a status below this counts as healthy (default 500).
    #[arg(long)]
    pub healthy_below: Option<u32>,
}

impl ProviderCommon {
    /// `Some(enabled)` if the user said anything about health checks being on or off.
    pub fn health_enabled(&self) -> Option<bool> {
        if self.no_health {
            Some(false)
        } else {
            self.health
        }
    }
}

// ---------------------------------------------------------------------------
// credentials
// ---------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum CredentialsCmd {
    /// Add a credential to a provider. The secret comes from an env var, a file or stdin.
    Add(CredentialAdd),
    /// List credentials (secrets redacted), optionally of one provider.
    #[command(visible_alias = "ls")]
    List {
        /// Only this provider's credentials.
        provider: Option<String>,
    },
    /// Change a credential's weight, description or secret (rotation).
    Update(CredentialUpdate),
    /// Put a credential back into rotation.
    Enable {
        /// Provider name.
        provider: String,
        /// Credential name.
        name: String,
    },
    /// Take a credential out of rotation without deleting it.
    Disable {
        /// Provider name.
        provider: String,
        /// Credential name.
        name: String,
    },
    /// Delete a credential.
    #[command(visible_alias = "rm")]
    Remove {
        /// Provider name.
        provider: String,
        /// Credential name.
        name: String,
    },
}

/// Where a secret comes from. At most one source; `add` requires one.
#[derive(Debug, Args, Default)]
#[group(id = "secret_source", multiple = false)]
pub struct SecretSource {
    /// Read the secret from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub secret_env: Option<String>,
    /// Read the secret from this file (a trailing newline is removed).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<std::path::PathBuf>,
    /// `-` reads the secret from stdin. A literal value also works but leaks via `ps` and shell history.
    #[arg(long, value_name = "-|VALUE")]
    pub secret: Option<String>,
}

impl SecretSource {
    pub fn is_given(&self) -> bool {
        self.secret_env.is_some() || self.secret_file.is_some() || self.secret.is_some()
    }
}

#[derive(Debug, Args)]
pub struct CredentialAdd {
    /// Provider the credential belongs to.
    pub provider: String,
    /// Name, unique within the provider (default: the first free `key-N`).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub secret: SecretSource,
    /// Share of traffic relative to the provider's other credentials (default 1).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Free text shown in `get` and `list`.
    #[arg(long)]
    pub description: Option<String>,
    /// Free-form metadata, `K=V` (repeatable).
    #[arg(long = "metadata", value_name = "K=V", value_parser = parse_kv)]
    pub metadata: Vec<(String, String)>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct CredentialUpdate {
    /// Provider name.
    pub provider: String,
    /// Credential name.
    pub name: String,
    #[command(flatten)]
    pub secret: SecretSource,
    #[arg(long)]
    pub weight: Option<u32>,
    /// Free text shown in `get` and `list`.
    #[arg(long)]
    pub description: Option<String>,
    /// Free-form metadata, `K=V` (repeatable; replaces the old set).
    #[arg(long = "metadata", value_name = "K=V", value_parser = parse_kv)]
    pub metadata: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------
// models and backends
// ---------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    /// Create a public model name.
    Add(ModelAdd),
    /// List models.
    #[command(visible_alias = "ls")]
    List,
    /// Show one model with its backends.
    Get {
        /// Model name.
        name: String,
    },
    /// Change the given fields of a model.
    Update(ModelUpdate),
    /// Delete a model and its backends.
    #[command(visible_alias = "rm")]
    Remove {
        /// Model name.
        name: String,
    },
    /// Set the price of a model (every backend without its own) or of one backend.
    SetPrice(SetPrice),
    /// Remove the price of a model or of one backend (its requests become unpriced,
    /// unless the model has a price).
    ClearPrice {
        /// Model name.
        model: String,
        /// Only this backend of the model.
        #[arg(long)]
        backend: Option<String>,
    },
}

/// `set-price MODEL input=2.5 cached_input=1.25 output=10`: the classes of the file's
/// `price` table, in currency units per million tokens, at most 3 decimals.
#[derive(Debug, Args)]
pub struct SetPrice {
    /// Model name.
    pub model: String,
    /// `CLASS=PRICE` per million tokens; classes: input and output (required),
    /// cached_input and cache_write (default: the input price), reasoning (default: the
    /// output price).
    #[arg(value_name = "CLASS=PRICE", value_parser = parse_price_class, required = true)]
    pub prices: Vec<(PriceClass, u64)>,
    /// Price this backend of the model instead of the model.
    #[arg(long)]
    pub backend: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceClass {
    Input,
    CachedInput,
    CacheWrite,
    Output,
    Reasoning,
}

impl SetPrice {
    /// The price given, checked: each class once, input and output present.
    pub fn price(&self) -> Result<switchyard_proto::Price, String> {
        let mut p = switchyard_proto::Price::default();
        for &(class, v) in &self.prices {
            let slot = match class {
                PriceClass::Input => &mut p.input,
                PriceClass::CachedInput => &mut p.cached_input,
                PriceClass::CacheWrite => &mut p.cache_write,
                PriceClass::Output => &mut p.output,
                PriceClass::Reasoning => &mut p.reasoning,
            };
            if slot.replace(v).is_some() {
                return Err(format!("{class:?} is given twice"));
            }
        }
        if p.input.is_none() || p.output.is_none() {
            return Err("input=PRICE and output=PRICE are required".into());
        }
        Ok(p)
    }
}

#[derive(Debug, Args)]
pub struct ModelAdd {
    /// The name clients send in `"model"`.
    pub name: String,
    #[command(flatten)]
    pub common: ModelCommon,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct ModelUpdate {
    /// Model name.
    pub name: String,
    #[command(flatten)]
    pub common: ModelCommon,
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    #[arg(long)]
    pub disable: bool,
}

#[derive(Debug, Args)]
pub struct ModelCommon {
    /// round_robin (default), random, weighted_random, weighted_round_robin,
    /// least_connections, least_latency or failover.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Retries on another backend after a retryable failure (default 2).
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Timeout of each try (`0s` = the provider's request timeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub per_try_timeout: Option<Duration>,
    /// Keep related requests on one backend: `none`, `user` (body `user` field) or `header:NAME`.
    #[arg(long, value_parser = parse_affinity)]
    pub affinity: Option<AffinityArg>,
    /// Free text shown in `get` and `list`.
    #[arg(long)]
    pub description: Option<String>,
    /// Free-form metadata, `K=V` (repeatable; on update the given set replaces the old one).
    #[arg(long = "metadata", value_name = "K=V", value_parser = parse_kv)]
    pub metadata: Vec<(String, String)>,
    /// Another name clients may ask the model by, exact or a pattern with `*` (e.g.
    /// `claude-*-haiku-*`); repeatable; on update the given set replaces the old one.
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// On update: remove every alias.
    #[arg(long, conflicts_with = "aliases")]
    pub no_aliases: bool,
    /// `max_tokens` for a request translated to an Anthropic backend whose OpenAI client
    /// set none (default 4096; `0` on update: back to the default).
    #[arg(long)]
    pub default_max_tokens: Option<u32>,
}

/// Parsed `--affinity` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityArg {
    pub kind: String,
    pub header: String,
}

#[derive(Debug, Subcommand)]
pub enum BackendsCmd {
    /// Route a model to a provider's upstream model.
    Add(BackendAdd),
    /// List backends, optionally of one model.
    #[command(visible_alias = "ls")]
    List {
        /// Only this model's backends.
        model: Option<String>,
    },
    /// Change the given fields of a backend.
    Update(BackendUpdate),
    /// Delete a backend.
    #[command(visible_alias = "rm")]
    Remove {
        /// Model name.
        model: String,
        /// Backend name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct BackendAdd {
    /// The public model this backend serves.
    pub model: String,
    /// Provider that serves it.
    #[arg(long)]
    pub provider: String,
    /// The model name the provider knows (default: the public model name).
    #[arg(long)]
    pub upstream_model: Option<String>,
    /// Name, unique within the model (default: the provider name).
    #[arg(long)]
    pub name: Option<String>,
    /// Relative share for weighted strategies (default 1).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Tier: lower is preferred; the next tier serves when a tier has no healthy backend (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct BackendUpdate {
    /// Model name.
    pub model: String,
    /// Backend name.
    pub name: String,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long)]
    pub upstream_model: Option<String>,
    #[arg(long)]
    pub weight: Option<u32>,
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    #[arg(long)]
    pub disable: bool,
}

// ---------------------------------------------------------------------------
// keys
// ---------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a client key and print it once.
    Create(KeyCreate),
    /// List keys (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Show one key.
    Get {
        /// Key name.
        name: String,
    },
    /// Change a key's models, expiry, description, pin permission or enabled state.
    Update(KeyUpdate),
    /// Revoke a key: it stops working at once but stays listed.
    Revoke {
        /// Key name.
        name: String,
    },
    /// Delete a key.
    #[command(visible_alias = "rm")]
    Remove {
        /// Key name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct KeyCreate {
    /// Key name (who or what uses it).
    pub name: String,
    /// Models this key may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Expiry: a duration from now (`30d`), an RFC 3339 time (`2027-01-01T00:00:00Z`) or `never`.
    #[arg(long, value_parser = parse_expiry)]
    pub expires: Option<Expiry>,
    /// Free text shown in `get` and `list`.
    #[arg(long)]
    pub description: Option<String>,
    /// Register an existing client token read from this env var instead of generating one.
    #[arg(long, value_name = "VAR")]
    pub import_env: Option<String>,
    /// Let the key pin a backend with the `x-switchyard-backend` header (skipping tiers).
    #[arg(long)]
    pub allow_pin: bool,
    /// The team the key belongs to: its limits count every key of the team together, and
    /// `usage`/`spend --by team` group by it.
    #[arg(long, value_name = "TEAM")]
    pub team: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeyUpdate {
    /// Key name.
    pub name: String,
    /// Models this key may use, comma-separated; an empty value (`--models ''`) allows all.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub models: Option<Vec<String>>,
    /// New expiry: a duration from now (`30d`), an RFC 3339 time, or `never`.
    #[arg(long, value_parser = parse_expiry)]
    pub expires: Option<Expiry>,
    /// Free text shown in `get` and `list`.
    #[arg(long)]
    pub description: Option<String>,
    /// Let the key work again (not possible once revoked).
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Stop the key working without revoking it.
    #[arg(long)]
    pub disable: bool,
    /// Let the key pin a backend with the `x-switchyard-backend` header.
    #[arg(long, conflicts_with = "no_allow_pin")]
    pub allow_pin: bool,
    /// Take the pin permission away.
    #[arg(long)]
    pub no_allow_pin: bool,
    /// Move the key to this team (`--team ''`: no team).
    #[arg(long, value_name = "TEAM")]
    pub team: Option<String>,
}

/// Parsed `--expires` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    Never,
    In(Duration),
    At(std::time::SystemTime),
}

// ---------------------------------------------------------------------------
// apply, export, workers
// ---------------------------------------------------------------------------

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The TOML document; `-` reads stdin.
    #[arg(short, long, value_name = "FILE")]
    pub file: String,
    /// Show what would change without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete providers, credentials, models, backends and keys the file does not name.
    #[arg(long)]
    pub prune: bool,
    /// Price every backend that has no price (and whose model has none) from the default
    /// table (`switchyard prices`), by its upstream model.
    #[arg(long)]
    pub default_prices: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Include credential secrets in the clear (`secret = "..."`). Handle the output with care.
    #[arg(long)]
    pub include_secrets: bool,
}

#[derive(Debug, Subcommand)]
pub enum WorkersCmd {
    /// Workers, the config version each has applied, and when each was last seen.
    #[command(visible_alias = "ls")]
    List,
}

// ---------------------------------------------------------------------------
// value parsers
// ---------------------------------------------------------------------------

/// `K=V` (the value may contain `=`).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// `CLASS=PRICE` (currency units per million tokens) → the class and nano-units per token.
pub fn parse_price_class(s: &str) -> Result<(PriceClass, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected CLASS=PRICE (e.g. input=2.5), got `{s}`"))?;
    let class = match k {
        "input" => PriceClass::Input,
        "cached_input" => PriceClass::CachedInput,
        "cache_write" => PriceClass::CacheWrite,
        "output" => PriceClass::Output,
        "reasoning" => PriceClass::Reasoning,
        _ => {
            return Err(format!(
                "unknown price class `{k}` (input, cached_input, cache_write, output or reasoning)"
            ))
        }
    };
    let v = crate::price::parse_decimal(v).ok_or_else(|| {
        format!(
            "{k}: expected a price per million tokens with at most 3 decimals (e.g. 2.5 or 0.075), got `{v}`"
        )
    })?;
    Ok((class, v))
}

pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected `on` or `off`, got `{s}`")),
    }
}

pub fn parse_probe(s: &str) -> Result<String, String> {
    let ok = s == "models"
        || s.strip_prefix("chat:").is_some_and(|m| !m.is_empty())
        || s.strip_prefix("messages:").is_some_and(|m| !m.is_empty());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected `models`, `chat:MODEL` or `messages:MODEL`, got `{s}`"
        ))
    }
}

pub fn parse_affinity(s: &str) -> Result<AffinityArg, String> {
    match s {
        "none" | "user" => Ok(AffinityArg {
            kind: s.to_string(),
            header: String::new(),
        }),
        _ => match s.strip_prefix("header:") {
            Some(h) if !h.is_empty() => Ok(AffinityArg {
                kind: "header".to_string(),
                header: h.to_string(),
            }),
            _ => Err(format!("expected `none`, `user` or `header:NAME`, got `{s}`")),
        },
    }
}

pub fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s == "never" {
        return Ok(Expiry::Never);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Expiry::In(d));
    }
    humantime::parse_rfc3339_weak(s).map(Expiry::At).map_err(|_| {
        format!("expected a duration (`30d`) or an RFC 3339 time (`2027-01-01T00:00:00Z`), got `{s}`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("switchyard").chain(args.iter().copied()))
    }

    #[test]
    fn tokens_is_an_alias_of_credentials() {
        let cli = parse(&["tokens", "add", "openai", "--secret-env", "X"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Credentials(CredentialsCmd::Add(_))
        ));
    }

    #[test]
    fn secret_sources_are_exclusive() {
        let err = parse(&["credentials", "add", "p", "--secret-env", "X", "--secret", "-"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn globals_work_after_the_subcommand() {
        let cli = parse(&["providers", "list", "-o", "json", "--control", "http://x:1"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.control_url(), "http://x:1");
    }

    #[test]
    fn provider_add_requires_kind_and_base_url() {
        let err = parse(&["providers", "add", "openai"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn provider_flags_parse() {
        let cli = parse(&[
            "providers",
            "add",
            "jb",
            "--kind",
            "openai",
            "--base-url",
            "https://x/v1",
            "--timeout",
            "90s",
            "--header",
            "x-a=b=c",
            "--no-health",
            "--health-probe",
            "chat:gpt-4o-mini",
        ])
        .unwrap();
        let Command::Providers(ProvidersCmd::Add(a)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(a.common.timeout, Some(Duration::from_secs(90)));
        assert_eq!(a.common.headers, vec![("x-a".to_string(), "b=c".to_string())]);
        assert_eq!(a.common.health_enabled(), Some(false));
        assert!(parse(&["providers", "update", "jb", "--health-probe", "ping"]).is_err());
        assert!(parse(&["providers", "update", "jb", "--enable", "--disable"]).is_err());
    }

    #[test]
    fn value_parsers() {
        assert_eq!(
            parse_affinity("header:x-session-id").unwrap(),
            AffinityArg {
                kind: "header".into(),
                header: "x-session-id".into()
            }
        );
        assert!(parse_affinity("header:").is_err());
        assert!(parse_affinity("cookie").is_err());
        assert_eq!(
            parse_expiry("30d").unwrap(),
            Expiry::In(Duration::from_secs(30 * 86400))
        );
        assert!(matches!(
            parse_expiry("2027-01-01T00:00:00Z").unwrap(),
            Expiry::At(_)
        ));
        assert!(parse_expiry("soon").is_err());
        assert_eq!(parse_expiry("never").unwrap(), Expiry::Never);
        assert!(parse_kv("=v").is_err());
        assert!(parse_on_off("maybe").is_err());
    }

    #[test]
    fn keys_models_split_on_commas() {
        let cli = parse(&["keys", "create", "team-a", "--models", "a,b"]).unwrap();
        let Command::Keys(KeysCmd::Create(k)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(k.models, vec!["a", "b"]);
    }

    #[test]
    fn keys_update_parses_every_flag() {
        let cli = parse(&[
            "keys",
            "update",
            "k",
            "--models",
            "",
            "--expires",
            "never",
            "--disable",
        ])
        .unwrap();
        let Command::Keys(KeysCmd::Update(u)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(u.expires, Some(Expiry::Never));
        assert!(u.models.is_some() && u.disable);
        let cli = parse(&["keys", "update", "k", "--expires", "7d"]).unwrap();
        let Command::Keys(KeysCmd::Update(u)) = cli.command else {
            panic!("wrong command")
        };
        assert!(u.models.is_none());
    }

    #[test]
    fn set_price_parses_units_per_million() {
        let cli = parse(&[
            "models",
            "set-price",
            "m",
            "--backend",
            "b",
            "input=2.5",
            "output=10",
            "cache_write=3.125",
        ])
        .unwrap();
        let Command::Models(ModelsCmd::SetPrice(p)) = cli.command else {
            panic!("wrong command")
        };
        let price = p.price().unwrap();
        assert_eq!(
            (price.input, price.output, price.cache_write, price.cached_input),
            (Some(2500), Some(10_000), Some(3125), None)
        );
        assert_eq!(p.backend.as_deref(), Some("b"));
        assert!(parse(&["models", "set-price", "m", "input=0.0001", "output=1"]).is_err());
        assert!(parse(&["models", "set-price", "m", "inputs=1", "output=1"]).is_err());
        assert!(parse(&["models", "set-price", "m"]).is_err());
        let Command::Models(ModelsCmd::SetPrice(p)) =
            parse(&["models", "set-price", "m", "input=1"]).unwrap().command
        else {
            panic!("wrong command")
        };
        assert!(p.price().is_err());
        let Command::Models(ModelsCmd::SetPrice(p)) =
            parse(&["models", "set-price", "m", "input=1", "output=1", "input=2"])
                .unwrap()
                .command
        else {
            panic!("wrong command")
        };
        assert!(p.price().is_err());
    }

    #[test]
    fn negative_priority_is_accepted() {
        assert!(parse(&["backends", "add", "m", "--provider", "p", "--priority", "-1"]).is_ok());
    }
}
