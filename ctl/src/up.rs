//! `switchyard up`: a whole gateway in one process — the control plane on an embedded
//! SQLite store under a data dir, one worker, and with `--demo` the mock upstream.
//!
//! The tokens it needs (admin, worker, a client key, the master key for secrets at rest)
//! are generated on the first start and kept in `<data-dir>/up.json` (mode 0600), so a
//! restart serves the same key. Configuration goes through the same Admin gRPC API that
//! the CLI uses (an in-process client to the control plane's own listener): `--config`
//! is exactly `switchyard apply -f FILE`. The separate `switchyard-control` and
//! `switchyard-worker` binaries remain the production form.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rand::{distr::Alphanumeric, Rng};
use serde::{Deserialize, Serialize};
use switchyard_proto as pb;
use tonic::Code;

use crate::{
    client::Admin,
    commands,
    doc::{FileBackend, FileCredential, FileDoc, FileModel, FileProvider, SecretEnv},
};

/// Name of the client key `up` creates and prints.
pub const KEY_NAME: &str = "up";
/// Name of the state file inside the data dir.
pub const STATE_FILE: &str = "up.json";
/// Provider and model registered by `--demo`.
pub const DEMO: &str = "demo";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the SQLite store, the worker's last-known-good snapshot and `up.json` (the
    /// generated tokens) live.
    #[arg(long, env = "SWITCHYARD_DATA_DIR", default_value = "./switchyard-data")]
    pub data_dir: PathBuf,
    /// Client traffic (OpenAI and Anthropic APIs) is served here.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The control plane's gRPC API (for the `switchyard` CLI).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Control-plane `/metrics` and `/healthz` (off unless given).
    #[arg(long)]
    pub control_http_listen: Option<SocketAddr>,
    /// The worker's ops listener: its `/metrics` and detailed `/health` (off unless given;
    /// `--listen` answers a `/health` of counts only). Keep it on loopback.
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
    /// Use this database instead of `<data-dir>/switchyard.db` (`postgres://...`).
    #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Encrypt credential secrets with this key (32 bytes, base64 or hex) instead of the
    /// one generated into `up.json`.
    #[arg(long, env = "SWITCHYARD_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Also run the mock upstream in-process and register it as provider and model `demo`,
    /// so that the printed curl answers without any real API key.
    #[arg(long)]
    pub demo: bool,
    /// Apply this declarative file at start (the same as `switchyard apply -f FILE`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// How long Ctrl-C waits for in-flight requests and streams.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// The generated secrets kept between starts.
#[derive(Clone, Serialize, Deserialize)]
pub struct UpState {
    pub admin_token: String,
    pub worker_token: String,
    pub client_key: String,
    /// 32 bytes, hex.
    pub master_key: String,
    /// The port the `--demo` upstream listened on, reused on the next start so that the
    /// stored provider's `base_url` (and a saved `export`) stays valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_port: Option<u16>,
}

impl std::fmt::Debug for UpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpState(***)")
    }
}

fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

impl UpState {
    fn generate() -> UpState {
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key);
        UpState {
            admin_token: format!("sy-admin-{}", random_alnum(40)),
            worker_token: format!("sy-worker-{}", random_alnum(40)),
            client_key: switchyard_control::crypto::generate_api_key(),
            master_key: key.iter().map(|b| format!("{b:02x}")).collect(),
            demo_port: None,
        }
    }

    /// Write the state back (after `demo_port` changed).
    fn save(&self, dir: &Path) -> Result<()> {
        write_private(
            &dir.join(STATE_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    /// Read `<dir>/up.json`, or generate and write it. `true` = generated now.
    pub fn load_or_create(dir: &Path) -> Result<(UpState, bool)> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let s: UpState = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a valid up state file", path.display()))?;
                Ok((s, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = UpState::generate();
                write_private(&path, serde_json::to_string_pretty(&s)?.as_bytes())?;
                Ok((s, true))
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// Write a file readable only by its owner, atomically (temp file + rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The address a local client dials for a listener bound to `a` (0.0.0.0 → 127.0.0.1).
fn dial_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        let ip = match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, a.port())
    } else {
        a
    }
}

/// The document `--demo` applies: the in-process mock as an OpenAI-kind provider.
pub fn demo_document(mock_openai_base: &str) -> FileDoc {
    FileDoc {
        providers: vec![FileProvider {
            name: DEMO.into(),
            kind: "openai".into(),
            base_url: mock_openai_base.into(),
            description: Some("switchyard up --demo: the in-process mock upstream".into()),
            credentials: vec![FileCredential {
                name: "demo-key".into(),
                secret: Some("sk-demo-not-a-real-key".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        models: vec![FileModel {
            name: DEMO.into(),
            // Upstream model = the public name, so the mock (which echoes the model it
            // was sent) answers `"model":"demo"` to a request for `demo`.
            backends: vec![FileBackend {
                provider: DEMO.into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        keys: Vec::new(),
        limits: Vec::new(),
    }
}

async fn apply(admin: &mut Admin, document: pb::ConfigDocument) -> Result<pb::ApplyResponse> {
    let r = admin
        .client
        .apply(pb::ApplyRequest {
            document: Some(document),
            dry_run: false,
            prune: false,
        })
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    Ok(r)
}

/// Make sure the key named [`KEY_NAME`] exists and is the one in `up.json`. With `pin`
/// (`--demo`) it may also pin a backend (`x-switchyard-backend`), so that the demo can
/// show pinning; without, an existing grant is left as the operator set it.
async fn ensure_client_key(admin: &mut Admin, state: &UpState, pin: bool) -> Result<()> {
    let wanted_prefix = switchyard_control::crypto::key_prefix(&state.client_key);
    match admin
        .client
        .get_api_key(pb::GetApiKeyRequest {
            name: KEY_NAME.into(),
        })
        .await
    {
        Ok(k) => {
            let k = k.into_inner();
            if k.prefix == wanted_prefix {
                if k.revoked || k.enabled == Some(false) {
                    tracing::warn!(
                        key = KEY_NAME,
                        "the client key of `up` is revoked or disabled; the printed key will be refused"
                    );
                }
                if pin && !k.allow_pin {
                    admin
                        .client
                        .update_api_key(pb::UpdateApiKeyRequest {
                            key: Some(pb::ApiKey {
                                name: KEY_NAME.into(),
                                allow_pin: true,
                                ..Default::default()
                            }),
                            update_mask: vec!["allow_pin".into()],
                        })
                        .await
                        .map_err(|s| admin.status(s))?;
                }
                return Ok(());
            }
            // The store outlived up.json (a new key was generated): replace the old key,
            // whose plaintext nobody has any more.
            tracing::info!(
                key = KEY_NAME,
                "replacing the stored client key with the one in up.json"
            );
            admin
                .client
                .delete_api_key(pb::DeleteApiKeyRequest {
                    name: KEY_NAME.into(),
                })
                .await
                .map_err(|s| admin.status(s))?;
        }
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(admin.status(s)),
    }
    admin
        .client
        .create_api_key(pb::CreateApiKeyRequest {
            team: Default::default(),
            name: KEY_NAME.into(),
            allowed_models: Vec::new(),
            expires_at_ms: 0,
            description: "created by `switchyard up` (plaintext in up.json)".into(),
            import_plaintext: state.client_key.clone(),
            allow_pin: pin,
        })
        .await
        .map_err(|s| admin.status(s))?;
    Ok(())
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .try_init();
}

/// What the banner needs to know.
struct Banner<'a> {
    worker: SocketAddr,
    grpc: SocketAddr,
    data_dir: &'a Path,
    state: &'a UpState,
    /// The model the curl line asks for, if any model exists, and the API it is served on.
    model: Option<(String, Api)>,
    demo: bool,
}

/// A single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The client API a model can be asked through: that of its backends' provider kind
/// (until the worker translates between them, a model is served only in its providers'
/// dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions` (`openai` providers).
    OpenAi,
    /// `POST /v1/messages` (`anthropic` providers).
    Anthropic,
}

impl Api {
    /// The API for `model`: OpenAI if any enabled backend's provider is `openai`
    /// (the SDK most tools speak), else Anthropic if one is `anthropic`.
    fn of(model: &pb::Model, providers: &[pb::Provider]) -> Api {
        let kinds: Vec<&str> = model
            .backends
            .iter()
            .filter(|b| b.enabled != Some(false))
            .filter_map(|b| providers.iter().find(|p| p.name == b.provider))
            .map(|p| p.kind.as_str())
            .collect();
        if !kinds.contains(&"openai") && kinds.contains(&"anthropic") {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }
}

/// The ready-to-paste curl line (one line, runnable with `sh -c`), in the dialect the
/// model is served in.
pub fn curl_line(worker: SocketAddr, key: &str, model: &str, api: Api) -> String {
    let messages = serde_json::json!([{"role": "user", "content": "Say hello"}]);
    match api {
        Api::OpenAi => format!(
            "curl -sS http://{worker}/v1/chat/completions -H {} -H 'content-type: application/json' -d {}",
            sh_quote(&format!("authorization: Bearer {key}")),
            sh_quote(&serde_json::json!({"model": model, "messages": messages}).to_string()),
        ),
        Api::Anthropic => format!(
            "curl -sS http://{worker}/v1/messages -H {} -H 'anthropic-version: 2023-06-01' \
             -H 'content-type: application/json' -d {}",
            sh_quote(&format!("x-api-key: {key}")),
            sh_quote(
                &serde_json::json!({"model": model, "max_tokens": 256, "messages": messages}).to_string()
            ),
        ),
    }
}

impl Banner<'_> {
    fn render(&self) -> String {
        let w = self.worker;
        let key = &self.state.client_key;
        let admin = &self.state.admin_token;
        let mut s = String::new();
        s.push_str(&format!(
            "\nSwitchyard is up: control plane + 1 worker{} in one process.\n\
             Data dir: {} (tokens in {STATE_FILE}, reused on the next start)\n\n",
            if self.demo { " + demo upstream" } else { "" },
            self.data_dir.display()
        ));
        s.push_str(&format!("  Worker URL      http://{w}\n"));
        s.push_str(&format!("  Client API key  {key}\n"));
        s.push_str(&format!("  Admin token     {admin}\n"));
        s.push_str(&format!("  Control (gRPC)  http://{}\n\n", self.grpc));
        match &self.model {
            Some((m, api)) => {
                s.push_str(&format!("Try it (model `{m}`):\n"));
                s.push_str(&format!("  {}\n\n", curl_line(w, key, m, *api)));
            }
            None => {
                s.push_str(
                    "No models yet. Add one (or restart with --demo, or --config switchyard.toml):\n\
                     \x20 switchyard providers add openai --kind openai --base-url https://api.openai.com/v1\n\
                     \x20 switchyard credentials add openai --secret-env OPENAI_API_KEY\n\
                     \x20 switchyard models add gpt-4o && switchyard backends add gpt-4o --provider openai\n\
                     Then:\n",
                );
                s.push_str(&format!("  {}\n\n", curl_line(w, key, "gpt-4o", Api::OpenAi)));
            }
        }
        s.push_str("OpenAI SDKs (Python, Node, ...):\n");
        s.push_str(&format!(
            "  export OPENAI_BASE_URL=http://{w}/v1 OPENAI_API_KEY={key}\n"
        ));
        s.push_str("Claude Code / Anthropic SDKs:\n");
        s.push_str(&format!(
            "  export ANTHROPIC_BASE_URL=http://{w} ANTHROPIC_API_KEY={key}\n"
        ));
        s.push_str("The switchyard CLI (from another shell):\n");
        s.push_str(&format!(
            "  export SWITCHYARD_CONTROL_URL=http://{} SWITCHYARD_ADMIN_TOKEN={admin}\n",
            self.grpc
        ));
        s.push_str("  switchyard status; switchyard models list; switchyard apply -f switchyard.toml\n\n");
        s.push_str("Ctrl-C stops (in-flight requests finish first).\n");
        s
    }
}

/// Wait (bounded) until the worker serves config `version`, so that the printed curl
/// works the moment the banner appears.
async fn wait_worker_version(worker: &switchyard_worker::Running, version: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = worker.shared().routing.load().as_ref().map_or(0, |r| r.version);
        if v >= version {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        // The worker's watch stream delivers the snapshot within milliseconds; this is
        // a bounded poll of an in-memory value, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Start the `--demo` upstream on the port it had last time (kept in `up.json`), so that
/// the stored `demo` provider's `base_url` does not change across restarts; a new port
/// (saved) only when that one is taken now.
async fn start_demo_mock(state: &mut UpState, data_dir: &Path) -> Result<switchyard_mock::MockServer> {
    let opts = |port: u16| switchyard_mock::MockOptions {
        listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        name: DEMO.into(),
        models: vec![DEMO.into()],
        no_request_log: true,
        ..Default::default()
    };
    let mock = match state.demo_port {
        Some(port) => match switchyard_mock::MockServer::start(opts(port)).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    port,
                    error = %e,
                    "the demo upstream's previous port is taken; using a new one (the demo provider's base_url changes)"
                );
                switchyard_mock::MockServer::start(opts(0))
                    .await
                    .context("start the demo upstream")?
            }
        },
        None => switchyard_mock::MockServer::start(opts(0))
            .await
            .context("start the demo upstream")?,
    };
    let port = mock.addr().port();
    if state.demo_port != Some(port) {
        state.demo_port = Some(port);
        state.save(data_dir)?;
    }
    Ok(mock)
}

/// Run the gateway until Ctrl-C or SIGTERM.
pub async fn run(a: UpArgs) -> Result<()> {
    init_tracing();
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("cannot create the data dir {}", a.data_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The store and up.json hold secrets: keep the directory private.
        let _ = std::fs::set_permissions(&a.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let (mut state, fresh) = UpState::load_or_create(&a.data_dir)?;
    if fresh {
        tracing::info!(path = %a.data_dir.join(STATE_FILE).display(), "generated tokens and a client key");
    }
    let master_key = match a.master_key.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => k.to_string(),
        None => state.master_key.clone(),
    };
    let master_key = switchyard_control::MasterKey::parse(1, &master_key)
        .map_err(|e| crate::UsageError(format!("--master-key: {e}")))?;

    // Traces, for both (README "Observability"): off unless an OTLP endpoint is set.
    let traces =
        switchyard_otel::Settings::from_env().map_err(|e| crate::UsageError(format!("traces: {e}")))?;

    // 1. Control plane.
    let control = switchyard_control::start(switchyard_control::Config {
        database_url: a.database_url.clone().filter(|s| !s.is_empty()),
        data_dir: a.data_dir.clone(),
        grpc_listen: a.grpc_listen,
        http_listen: a.control_http_listen,
        admin_token: Some(switchyard_control::Secret::new(state.admin_token.clone())),
        worker_token: Some(switchyard_control::Secret::new(state.worker_token.clone())),
        insecure: false,
        master_key: Some(master_key),
        old_master_keys: Vec::new(),
        traces: traces.clone(),
        ..Default::default()
    })
    .await
    .map_err(|e| match e {
        switchyard_control::Error::Crypto(_) => anyhow!(
            "control plane: {e}. The store was encrypted with another master key \
             ({STATE_FILE} replaced?); pass the old one with --master-key"
        ),
        switchyard_control::Error::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse => anyhow!(
            "control plane: cannot listen on {}: {io}. Is another Switchyard running? \
             Pick another address with --grpc-listen",
            a.grpc_listen
        ),
        e => anyhow!("control plane: {e}"),
    })?;
    let grpc = dial_addr(control.grpc_addr());
    let control_url = format!("http://{grpc}");

    // 2. Configuration through the Admin API: client key, demo, --config.
    let mut admin = Admin::connect(&control_url, Some(&state.admin_token), &Default::default()).await?;
    ensure_client_key(&mut admin, &state, a.demo).await?;
    let mock = if a.demo {
        let mock = start_demo_mock(&mut state, &a.data_dir).await?;
        let document = demo_document(&mock.openai_base()).into_proto(&SecretEnv {
            base_dir: None,
            getenv: &|_| None,
        })?;
        let r = apply(&mut admin, document).await?;
        tracing::info!(
            changes = r.changes.len(),
            version = r.version,
            "demo provider and model registered"
        );
        Some(mock)
    } else {
        None
    };
    if let Some(file) = &a.config {
        let file = file.to_string_lossy();
        let loaded = commands::load_document(&file)?;
        commands::check_unset_secrets(&mut admin, &file, &loaded.unset).await?;
        let r = apply(&mut admin, loaded.document)
            .await
            .with_context(|| format!("apply {file}"))?;
        eprint!("{file}: {}", commands::apply_text(&r));
    }
    // The committed version (GetStatus reports the published snapshot, which may lag a
    // just-committed change by a few milliseconds).
    let exported = admin
        .client
        .export(pb::ExportRequest {
            include_secrets: false,
        })
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let committed = exported.version;
    let document = exported.document.unwrap_or_default();
    let mut models: Vec<&pb::Model> = document
        .models
        .iter()
        .filter(|m| m.enabled != Some(false))
        .collect();
    models.sort_by(|x, y| x.name.cmp(&y.name));
    let chosen = if a.demo {
        models.iter().find(|m| m.name == DEMO)
    } else {
        models.first()
    };
    let model = chosen.map(|m| (m.name.clone(), Api::of(m, &document.providers)));

    // 3. The worker, fed by the control plane over gRPC like any other worker.
    let mut wcfg = switchyard_worker::Config::new(a.listen);
    wcfg.ops_listen = a.ops_listen;
    wcfg.control_url = Some(control_url);
    wcfg.worker_token = Some(switchyard_worker::Secret::new(state.worker_token.clone()));
    wcfg.worker_id = "up".into();
    wcfg.state_dir = Some(a.data_dir.join("worker-state"));
    wcfg.drain_timeout = a.drain_timeout;
    let (access_log, _access_guard) = switchyard_worker::accesslog::spawn(std::io::stderr())?;
    wcfg.access_log = Some(access_log);
    wcfg.traces = traces;
    let mut worker = match switchyard_worker::start(wcfg).await {
        Ok(w) => w,
        Err(e) => {
            control.shutdown().await;
            bail!("worker: {e} (pick another address with --listen)");
        }
    };
    if !wait_worker_version(&worker, committed).await {
        tracing::warn!(
            version = committed,
            "the worker has not received the current config yet"
        );
    }
    let worker_addr = dial_addr(worker.http_addr());

    match worker.ops_addr() {
        Some(ops) => crate::out(&format!("listening http={worker_addr} grpc={grpc} ops={ops}\n"))?,
        None => crate::out(&format!("listening http={worker_addr} grpc={grpc}\n"))?,
    }
    let banner = Banner {
        worker: worker_addr,
        grpc,
        data_dir: &a.data_dir,
        state: &state,
        model,
        demo: a.demo,
    };
    crate::out(&format!("{}\n", banner.render()))?;

    // 4. Run until a signal (or a component stops on its own).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    let failed = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        _ = control.wait() => Some("control plane"),
        _ = worker.wait() => Some("worker"),
    };
    tracing::info!("shutting down: draining the worker, then the control plane");
    worker.shutdown().await;
    if let Some(m) = mock {
        m.shutdown().await;
    }
    control.shutdown().await;
    match failed {
        Some(what) => bail!("the {what} stopped unexpectedly"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn state_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, fresh) = UpState::load_or_create(dir.path()).unwrap();
        assert!(fresh);
        assert!(a.client_key.starts_with("sk-sy-"));
        assert!(switchyard_control::MasterKey::parse(1, &a.master_key).is_ok());
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, fresh) = UpState::load_or_create(dir.path()).unwrap();
        assert!(!fresh);
        assert_eq!(a.client_key, b.client_key);
        assert_eq!(a.admin_token, b.admin_token);
        assert_eq!(format!("{a:?}"), "UpState(***)");
    }

    #[test]
    fn curl_line_quotes_for_sh() {
        let l = curl_line(
            "127.0.0.1:8080".parse().unwrap(),
            "sk-sy-abc",
            "it's",
            Api::OpenAi,
        );
        assert!(l.starts_with("curl -sS http://127.0.0.1:8080/v1/chat/completions "));
        assert!(l.contains(r#"'authorization: Bearer sk-sy-abc'"#));
        assert!(l.contains(r#""model":"it'\''s""#));
        let l = curl_line(
            "127.0.0.1:8080".parse().unwrap(),
            "sk-sy-abc",
            "c",
            Api::Anthropic,
        );
        assert!(
            l.starts_with("curl -sS http://127.0.0.1:8080/v1/messages "),
            "{l}"
        );
        assert!(l.contains("'x-api-key: sk-sy-abc'"), "{l}");
        assert!(l.contains("'anthropic-version: 2023-06-01'"), "{l}");
        assert!(l.contains(r#""max_tokens":256"#), "{l}");
        assert!(!l.contains('\n'), "one line: {l}");
    }

    #[test]
    fn unspecified_listen_is_dialled_on_loopback() {
        assert_eq!(
            dial_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            dial_addr("10.0.0.1:1".parse().unwrap()),
            "10.0.0.1:1".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn demo_document_converts() {
        let d = demo_document("http://127.0.0.1:1/v1")
            .into_proto(&SecretEnv {
                base_dir: None,
                getenv: &|_| None,
            })
            .unwrap();
        assert_eq!(d.providers[0].credentials[0].secret, "sk-demo-not-a-real-key");
        assert_eq!(d.models[0].backends[0].provider, DEMO);
    }
}
