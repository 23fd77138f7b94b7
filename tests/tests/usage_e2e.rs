//! Issue 5 acceptance, with real processes: control + two workers + the mock upstream.
//!
//! Requests (OpenAI and Anthropic, plain and streaming) go through both workers to a mock
//! that reports known usage; `switchyard usage --by key -o json` must equal the exact sums
//! of what the clients saw: after a quiet run, after control was SIGKILLed for a while
//! under load and restarted, and after a worker was SIGTERMed in the middle of a burst.
//! An OpenAI stream without `include_usage` reaches the client byte-identical to the
//! mock's own no-usage stream and is still counted. An upstream whose probes fail shows
//! unhealthy on both workers (`switchyard health`) with a history entry, then healthy
//! again. `promtool check metrics` accepts the worker's and control's `/metrics`.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use parking_lot::Mutex;
use switchyard_mock::{Behavior, MockOptions, MockServer, Usage};
use switchyard_tests::{bin_path, stable_port, wait_for, DbKind, Proc, TestDb};
use tokio::process::Command;

const ADMIN_TOKEN: &str = "usage-admin-token-0123456789";
const WORKER_TOKEN: &str = "usage-worker-token-0123456789";
const USAGE: Usage = Usage {
    prompt_tokens: 11,
    completion_tokens: 7,
    cached_tokens: 3,
    reasoning_tokens: 2,
    cache_write_tokens: 0,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    OaPlain,
    OaStream,
    AnPlain,
    AnStream,
}
const KINDS: [Kind; 4] = [Kind::OaPlain, Kind::OaStream, Kind::AnPlain, Kind::AnStream];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    requests: u64,
    errors: u64,
    prompt: u64,
    completion: u64,
    total: u64,
    cached: u64,
    reasoning: u64,
}

impl Tally {
    /// What the worker must record for one successful request of `kind`.
    fn add_success(&mut self, kind: Kind) {
        self.requests += 1;
        match kind {
            Kind::OaPlain | Kind::OaStream => {
                self.prompt += USAGE.prompt_tokens;
                self.completion += USAGE.completion_tokens;
                self.total += USAGE.prompt_tokens + USAGE.completion_tokens;
                self.cached += USAGE.cached_tokens;
                self.reasoning += USAGE.reasoning_tokens;
            }
            // Anthropic: input + cache reads (the mock reports input_tokens = prompt).
            Kind::AnPlain | Kind::AnStream => {
                let p = USAGE.prompt_tokens + USAGE.cached_tokens;
                self.prompt += p;
                self.completion += USAGE.completion_tokens;
                self.total += p + USAGE.completion_tokens;
                self.cached += USAGE.cached_tokens;
            }
        }
    }
}

type Tallies = Arc<Mutex<BTreeMap<String, Tally>>>;

struct Env {
    dir: tempfile::TempDir,
    db: TestDb,
    grpc: SocketAddr,
    control: Option<Proc>,
    workers: Vec<Option<Proc>>,
    worker_urls: Vec<String>,
    /// Each worker's ops listener (`/metrics`).
    worker_ops: Vec<String>,
    http: reqwest::Client,
}

impl Env {
    /// Control on SQLite and `workers` workers, started.
    async fn start(workers: usize) -> Result<Self> {
        let mut env = Env {
            dir: tempfile::tempdir()?,
            db: TestDb::new(DbKind::Sqlite).await?.unwrap(),
            grpc: format!("127.0.0.1:{}", stable_port()).parse()?,
            control: None,
            workers: (0..workers).map(|_| None).collect(),
            worker_urls: vec![String::new(); workers],
            worker_ops: vec![String::new(); workers],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
        };
        env.start_control().await?;
        for i in 0..workers {
            env.start_worker(i).await?;
        }
        Ok(env)
    }

    /// `switchyard keys create <name>`: the plaintext key.
    async fn create_key(&self, name: &str) -> Result<String> {
        let out = self.ctl(&["keys", "create", name]).await?;
        Ok(out
            .split(|c: char| c.is_whitespace() || c == '"')
            .find(|w| w.starts_with("sk-sy-"))
            .ok_or_else(|| anyhow!("no key in {out}"))?
            .to_string())
    }

    /// Provider `<p>` of `kind` at `base`, with a credential, and model `m-<p>` on it
    /// (upstream model `up-<p>`).
    async fn add_model(&self, p: &str, kind: &str, base: &str) -> Result<()> {
        let (model, upstream) = (format!("m-{p}"), format!("up-{p}"));
        self.ctl(&["providers", "add", p, "--kind", kind, "--base-url", base])
            .await?;
        self.ctl(&["credentials", "add", p, "--secret-env", "UPSTREAM_KEY"])
            .await?;
        self.ctl(&["models", "add", &model]).await?;
        let backend = [
            "backends",
            "add",
            &model,
            "--provider",
            p,
            "--upstream-model",
            &upstream,
        ];
        self.ctl(&backend).await?;
        Ok(())
    }

    fn control_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    async fn start_control(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin_path("switchyard-control"));
        cmd.args([
            "--grpc-listen",
            &self.grpc.to_string(),
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--database-url", &self.db.url])
        .arg("--data-dir")
        .arg(self.dir.path().join("control"))
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "info,sqlx=warn");
        self.control = Some(Proc::spawn("control", cmd).await?);
        Ok(())
    }

    async fn start_worker(&mut self, i: usize) -> Result<()> {
        self.start_worker_with(i, "10s").await
    }

    async fn start_worker_with(&mut self, i: usize, drain: &str) -> Result<()> {
        let mut cmd = Command::new(bin_path("switchyard-worker"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--control",
            &self.control_url(),
        ])
        .args(["--worker-id", &format!("w{i}"), "--drain-timeout", drain])
        .arg("--state-dir")
        .arg(self.dir.path().join(format!("w{i}")))
        .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "info");
        let p = Proc::spawn(&format!("w{i}"), cmd).await?;
        self.worker_urls[i] = p.url("http");
        self.worker_ops[i] = p.url("ops");
        self.workers[i] = Some(p);
        Ok(())
    }

    async fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin_path("switchyard"))
            .arg("--control")
            .arg(self.control_url())
            .args(args)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("UPSTREAM_KEY", "sk-upstream-secret")
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "switchyard {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `switchyard usage --by key -o json` as tallies.
    async fn usage_by_key(&self) -> Result<BTreeMap<String, Tally>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ctl(&["usage", "--by", "key", "-o", "json"]).await?)?;
        let mut out = BTreeMap::new();
        for r in v["rows"].as_array().ok_or_else(|| anyhow!("no rows: {v}"))? {
            let n = |f: &str| r[f].as_u64().unwrap_or(0);
            out.insert(
                r["group"].as_str().unwrap_or_default().to_string(),
                Tally {
                    requests: n("requests"),
                    errors: n("errors"),
                    prompt: n("prompt_tokens"),
                    completion: n("completion_tokens"),
                    total: n("total_tokens"),
                    cached: n("cached_tokens"),
                    reasoning: n("reasoning_tokens"),
                },
            );
        }
        Ok(out)
    }

    async fn expect_usage(&self, want: &Tallies, what: &str) -> Result<()> {
        let want = want.lock().clone();
        let last = Mutex::new(BTreeMap::new());
        let r = wait_for(what, Duration::from_secs(40), || async {
            let got = self.usage_by_key().await?;
            let same = got == want;
            *last.lock() = got;
            Ok(same.then_some(()))
        })
        .await;
        if r.is_err() {
            bail!("{what}: usage differs\n want {want:?}\n  got {:?}", last.lock());
        }
        Ok(())
    }
}

/// The mock upstream, reporting `USAGE` on every answer.
async fn usage_mock() -> Result<MockServer> {
    Ok(MockServer::start(MockOptions {
        default: Some(Behavior {
            usage: USAGE,
            ..Behavior::default()
        }),
        ..MockOptions::default()
    })
    .await?)
}

fn body(kind: Kind, model: &str) -> serde_json::Value {
    let msgs = serde_json::json!([{"role": "user", "content": "hi"}]);
    match kind {
        Kind::OaPlain => serde_json::json!({"model": model, "messages": msgs}),
        Kind::OaStream => serde_json::json!({"model": model, "messages": msgs, "stream": true}),
        Kind::AnPlain => serde_json::json!({"model": model, "max_tokens": 16, "messages": msgs}),
        Kind::AnStream => {
            serde_json::json!({"model": model, "max_tokens": 16, "messages": msgs, "stream": true})
        }
    }
}

/// One request; `Ok(Some(status))` when a complete response arrived, `Ok(None)` when no
/// response did (connection refused or reset before headers).
async fn send(http: &reqwest::Client, base: &str, key: &str, kind: Kind) -> Result<Option<(u16, Vec<u8>)>> {
    let (path, model) = match kind {
        Kind::OaPlain | Kind::OaStream => ("/v1/chat/completions", "m-oa"),
        Kind::AnPlain | Kind::AnStream => ("/v1/messages", "m-an"),
    };
    let r = match http
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body(kind, model))
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => return Ok(None),
    };
    let status = r.status().as_u16();
    // A response that started must finish: a drained worker completes what it accepted.
    let b = r
        .bytes()
        .await
        .map_err(|e| anyhow!("response body of {kind:?} from {base} broke: {e}"))?;
    Ok(Some((status, b.to_vec())))
}

async fn send_and_tally(
    http: &reqwest::Client,
    base: &str,
    key_name: &str,
    key: &str,
    kind: Kind,
    tallies: &Tallies,
) -> Result<bool> {
    let Some((status, _)) = send(http, base, key, kind).await? else {
        return Ok(false);
    };
    let mut t = tallies.lock();
    let e = t.entry(key_name.to_string()).or_default();
    if status == 200 {
        e.add_success(kind);
    } else {
        e.requests += 1;
        e.errors += 1;
    }
    Ok(true)
}

/// Load on the given workers until `stop`; errors other than "no response" fail.
fn spawn_load(
    http: reqwest::Client,
    bases: Vec<String>,
    keys: Vec<(String, String)>,
    tallies: Tallies,
    stop: Arc<AtomicBool>,
    tasks: usize,
) -> Vec<tokio::task::JoinHandle<Result<u64>>> {
    (0..tasks)
        .map(|t| {
            let (http, bases, keys, tallies, stop) = (
                http.clone(),
                bases.clone(),
                keys.clone(),
                tallies.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let base = &bases[i % bases.len()];
                    let (kn, k) = &keys[i % keys.len()];
                    if !send_and_tally(&http, base, kn, k, KINDS[(i / 2) % 4], &tallies).await? {
                        // The worker is gone: let the test's own checks tell what happened.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    n += 1;
                    i += 1;
                }
                Ok(n)
            })
        })
        .collect()
}

/// (healthy workers, total workers) of the backend of `model`, from `switchyard health`.
async fn backend_health(env: &Env, model: &str) -> Result<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ctl(&["health", "--model", model, "-o", "json"]).await?)?;
    let t = v
        .as_array()
        .and_then(|a| a.iter().find(|t| t["kind"] == "backend" && t["model"] == model))
        .cloned()
        .ok_or_else(|| anyhow!("no backend of {model} in {v}"))?;
    Ok((
        t["healthy_workers"].as_u64().unwrap_or(99),
        t["total_workers"].as_u64().unwrap_or(0),
    ))
}

async fn promtool(text: &str, what: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow!("promtool not runnable ({e}); scripts/ensure-deps.sh installs it"))?;
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "promtool check metrics rejected {what}:\n{}{}\n--- metrics ---\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_and_health_end_to_end() -> Result<()> {
    let mock = usage_mock().await?;
    let mock_h = MockServer::start(MockOptions::default()).await?;
    let mut env = Env::start(2).await?;

    // Config through the CLI.
    let mut keys = Vec::new();
    for name in ["ka", "kb"] {
        keys.push((name.to_string(), env.create_key(name).await?));
    }
    let oa = mock.openai_base();
    env.add_model("oa", "openai", &oa).await?;
    env.add_model("an", "anthropic", &mock.url()).await?;
    let hp = mock_h.openai_base();
    for args in [
        vec![
            "providers",
            "add",
            "hp",
            "--kind",
            "openai",
            "--base-url",
            &hp,
            "--health",
            "on",
            "--health-probe",
            "chat:up-h",
            "--health-interval",
            "500ms",
            "--health-timeout",
            "400ms",
        ],
        vec!["credentials", "add", "hp", "--secret-env", "UPSTREAM_KEY"],
        vec!["models", "add", "m-h"],
        vec![
            "backends",
            "add",
            "m-h",
            "--provider",
            "hp",
            "--upstream-model",
            "up-h",
        ],
    ] {
        env.ctl(&args).await?;
    }
    for base in env.worker_urls.clone() {
        for kind in [Kind::OaPlain, Kind::AnPlain] {
            wait_for(
                &format!("{kind:?} served by {base}"),
                Duration::from_secs(20),
                || async {
                    Ok(send(&env.http, &base, &keys[0].1, kind)
                        .await?
                        .filter(|(s, _)| *s == 200)
                        .map(|_| ()))
                },
            )
            .await?;
        }
    }
    // Those warm-up requests were recorded too.
    let tallies: Tallies = Arc::default();
    {
        let mut t = tallies.lock();
        let e = t.entry("ka".into()).or_default();
        for _ in 0..2 {
            e.add_success(Kind::OaPlain);
            e.add_success(Kind::AnPlain);
        }
    }

    // 1. A known set of requests through both workers.
    for round in 0..5 {
        for (wi, base) in env.worker_urls.iter().enumerate() {
            for (kn, k) in &keys {
                for kind in KINDS {
                    assert!(
                        send_and_tally(&env.http, base, kn, k, kind, &tallies).await?,
                        "round {round} worker {wi} {kind:?}: no response"
                    );
                }
            }
        }
    }
    env.expect_usage(&tallies, "exact sums after the first run")
        .await?;

    // 2. Stream without include_usage: byte-identical to the mock's own no-usage stream,
    //    while the upstream was asked for usage, and counted.
    let (status, via_worker) = send(&env.http, &env.worker_urls[0], &keys[1].1, Kind::OaStream)
        .await?
        .unwrap();
    assert_eq!(status, 200);
    tallies
        .lock()
        .entry("kb".into())
        .or_default()
        .add_success(Kind::OaStream);
    let upstream_req = mock.requests().last().unwrap().json().unwrap();
    assert_eq!(
        upstream_req["stream_options"]["include_usage"], true,
        "{upstream_req}"
    );
    let direct = env
        .http
        .post(format!("{oa}/chat/completions"))
        .bearer_auth("sk-upstream-secret")
        .json(&body(Kind::OaStream, "up-oa"))
        .send()
        .await?
        .bytes()
        .await?;
    assert!(
        !direct.windows(7).any(|w| w == b"\"usage\""),
        "the mock's no-usage stream has usage"
    );
    assert_eq!(
        String::from_utf8_lossy(&via_worker),
        String::from_utf8_lossy(&direct),
        "client stream differs from the upstream's no-usage stream"
    );
    env.expect_usage(&tallies, "the stripped stream is counted")
        .await?;

    // 3. Health: fault the upstream's probes, see it unhealthy on both workers, restore.
    wait_for("m-h healthy on both workers", Duration::from_secs(20), || async {
        Ok((backend_health(&env, "m-h").await? == (2, 2)).then_some(()))
    })
    .await?;
    mock_h.set_default(Behavior::error(503));
    let t0 = Instant::now();
    wait_for(
        "m-h unhealthy on both workers",
        Duration::from_secs(10),
        || async { Ok((backend_health(&env, "m-h").await? == (0, 2)).then_some(())) },
    )
    .await?;
    let took = t0.elapsed();
    eprintln!("unhealthy on both workers after {took:?} (probe interval 500ms)");
    assert!(
        took < Duration::from_millis(500) + Duration::from_secs(3),
        "took {took:?}"
    );
    let hist: serde_json::Value =
        serde_json::from_str(&env.ctl(&["health", "history", "hp", "-o", "json"]).await?)?;
    let sick: Vec<_> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["healthy"] == false && e["kind"] == "backend")
        .map(|e| e["worker_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        sick.contains(&"w0".to_string()) && sick.contains(&"w1".to_string()),
        "{hist}"
    );
    assert!(
        hist.as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or_default().contains("503")),
        "{hist}"
    );
    mock_h.set_default(Behavior::default());
    wait_for(
        "m-h healthy again on both workers",
        Duration::from_secs(10),
        || async { Ok((backend_health(&env, "m-h").await? == (2, 2)).then_some(())) },
    )
    .await?;

    // promtool accepts both /metrics outputs.
    let wm = env
        .http
        .get(format!("{}/metrics", env.worker_ops[0]))
        .send()
        .await?
        .text()
        .await?;
    for needle in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_ttfb_seconds_bucket",
        "switchyard_tokens_total",
        "switchyard_reports_dropped_total",
        "switchyard_config_version",
        "switchyard_backend_healthy",
    ] {
        assert!(wm.contains(needle), "worker /metrics lacks {needle}");
    }
    promtool(&wm, "the worker's /metrics").await?;
    let control_http = env.control.as_ref().unwrap().url("http");
    let cm = env
        .http
        .get(format!("{control_http}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(cm.contains("switchyard_control_report_usage_rows_total"), "{cm}");
    promtool(&cm, "control's /metrics").await?;
    // The shipped Grafana dashboard is valid JSON and only uses metrics that exist.
    let dash_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/switchyard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dash_path)?)?;
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(exprs.len() >= 10);
    for e in &exprs {
        for (i, _) in e.match_indices("switchyard_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                wm.contains(&name) || cm.contains(&name),
                "dashboard uses unknown metric {name}"
            );
        }
    }

    // 4. Control SIGKILLed under load for a while, then restarted: still exact.
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        env.http.clone(),
        env.worker_urls.clone(),
        keys.clone(),
        tallies.clone(),
        stop.clone(),
        4,
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // load before the kill
    env.control.as_ref().unwrap().signal("KILL").await?;
    env.control = None;
    // The outage itself (a scenario length, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.start_control().await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // load after the restart
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for h in load {
        sent += h.await??;
    }
    eprintln!("{sent} requests during the control outage phase");
    assert!(sent > 20, "load generator barely ran ({sent})");
    env.expect_usage(&tallies, "exact sums after the control outage")
        .await?;

    // 5. SIGTERM a worker in the middle of a burst: still exact.
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        env.http.clone(),
        vec![env.worker_urls[0].clone()],
        keys.clone(),
        tallies.clone(),
        stop.clone(),
        8,
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // burst under way
    let mut w0 = env.workers[0].take().unwrap();
    let status = w0.terminate(Duration::from_secs(30)).await?;
    assert!(
        status.success(),
        "worker exited with {status}: {}",
        w0.stderr_text()
    );
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await??;
    }
    env.expect_usage(&tallies, "exact sums after a worker was SIGTERMed mid-burst")
        .await?;

    // 6. Control down while a worker serves from its last-known-good snapshot and is
    //    stopped: the records go to the spool, and are replayed after both come back.
    env.control.as_ref().unwrap().signal("KILL").await?;
    env.control = None;
    env.start_worker_with(0, "2s").await?;
    let base = env.worker_urls[0].clone();
    for kind in KINDS {
        assert!(send_and_tally(&env.http, &base, "ka", &keys[0].1, kind, &tallies).await?);
    }
    let mut w0 = env.workers[0].take().unwrap();
    let status = w0.terminate(Duration::from_secs(30)).await?;
    assert!(
        status.success(),
        "worker exited with {status}: {}",
        w0.stderr_text()
    );
    let spool = env.dir.path().join("w0").join("spool");
    let spooled = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
    assert!(spooled > 0, "nothing spooled; worker log:\n{}", w0.stderr_text());
    env.start_control().await?;
    env.start_worker(0).await?;
    env.expect_usage(&tallies, "exact sums after replaying the spool")
        .await?;
    wait_for("spool emptied", Duration::from_secs(10), || async {
        Ok((std::fs::read_dir(&spool)?.count() == 0).then_some(()))
    })
    .await?;
    Ok(())
}

/// An idle worker's reporter stops its timers (`switchyard_reporter_idle 1`) and sleeps
/// until something happens: the first request after that must wake it, or its usage
/// would never reach control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_wakes_an_idle_reporter() -> Result<()> {
    let mock = usage_mock().await?;
    let env = Env::start(1).await?;
    let key = env.create_key("ka").await?;
    env.add_model("oa", "openai", &mock.openai_base()).await?;
    let base = env.worker_urls[0].clone();
    let metrics = format!("{}/metrics", env.worker_ops[0]);
    let has_line = |want: fn(&str) -> bool| {
        let (http, metrics) = (&env.http, &metrics);
        async move {
            let text = http.get(metrics).send().await?.text().await?;
            Ok(text.lines().any(want).then_some(()))
        }
    };
    // The whole config (the backend is added last) is on the worker: every request from
    // here on is served, and counted exactly.
    wait_for("the backend on the worker", Duration::from_secs(20), || {
        has_line(|l| l.starts_with("switchyard_backend_healthy{model=\"m-oa\"") && l.ends_with(" 1"))
    })
    .await?;
    let tallies: Tallies = Arc::default();
    assert!(send_and_tally(&env.http, &base, "ka", &key, Kind::OaPlain, &tallies).await?);
    env.expect_usage(&tallies, "the first request counted").await?;

    wait_for("the reporter asleep", Duration::from_secs(20), || {
        has_line(|l| l == "switchyard_reporter_idle 1")
    })
    .await?;
    assert!(send_and_tally(&env.http, &base, "ka", &key, Kind::OaPlain, &tallies).await?);
    env.expect_usage(&tallies, "a request made while the reporter slept")
        .await?;
    Ok(())
}
