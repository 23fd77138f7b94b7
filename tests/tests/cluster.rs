//! The docker-compose topology as local processes: Postgres, one control plane, three
//! workers behind the real `haproxy` in TCP mode, driven only through the `switchyard` CLI
//! and HTTP. The worker and control command lines are read out of docker-compose.yml and
//! the balancer config is deploy/haproxy.cfg, so the test and the compose file cannot drift.
//!
//! Prints its figures (propagation time, client errors during a worker kill) on stderr.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use switchyard_tests::repo_root;
use switchyard_tests::{bin_path, stable_port, wait_for, DbKind, Proc, TestDb};
use tokio::process::{Child, Command};

const ADMIN_TOKEN: &str = "cluster-admin-token-0123456789";
/// The directory `switchyard certs init` wrote (as compose's one-shot `certs` service does).
static CERTS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The `command:` array of a service in docker-compose.yml (one-line JSON-style arrays).
fn compose_command(service: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml"))?;
    let mut in_service = false;
    for line in text.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") {
            in_service = line.trim_end() == format!("  {service}:");
            continue;
        }
        if in_service {
            if let Some(rest) = line.trim_start().strip_prefix("command:") {
                return serde_json::from_str(rest.trim())
                    .context("compose command is not a JSON-style array");
            }
        }
    }
    bail!("no command for service {service} in docker-compose.yml")
}

/// Replace `0.0.0.0:PORT`-style listen values and compose host names with local ones.
fn localise(args: Vec<String>, subst: &[(&str, String)]) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            subst
                .iter()
                .find(|(from, _)| a == *from)
                .map(|(_, to)| to.clone())
                .unwrap_or(a)
        })
        .collect()
}

struct Cluster {
    dir: tempfile::TempDir,
    db: TestDb,
    control: Option<Proc>,
    control_grpc: SocketAddr,
    workers: Vec<Option<Proc>>,
    worker_ports: Vec<u16>,
    _haproxy: Child,
    lb: String,
}

impl Cluster {
    /// Control over mTLS, as compose runs it: its certificate names `localhost`.
    fn control_url(&self) -> String {
        format!("https://localhost:{}", self.control_grpc.port())
    }

    /// What compose's `/certs/...` paths are here.
    fn cert_paths(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.path().join("certs");
        [
            "ca.pem",
            "control.pem",
            "control-key.pem",
            "worker.pem",
            "worker-key.pem",
        ]
        .into_iter()
        .map(|f| {
            let from: &'static str = match f {
                "ca.pem" => "/certs/ca.pem",
                "control.pem" => "/certs/control.pem",
                "control-key.pem" => "/certs/control-key.pem",
                "worker.pem" => "/certs/worker.pem",
                _ => "/certs/worker-key.pem",
            };
            (from, d.join(f).display().to_string())
        })
        .collect()
    }

    async fn start_control(&mut self) -> Result<()> {
        let mut subst = vec![
            ("0.0.0.0:50051", self.control_grpc.to_string()),
            ("0.0.0.0:9090", "127.0.0.1:0".to_string()),
        ];
        subst.extend(self.cert_paths());
        let mut args = localise(compose_command("control")?, &subst);
        let prog = args.remove(0);
        let mut cmd = Command::new(bin_path(&prog));
        cmd.args(&args)
            .env("SWITCHYARD_DATABASE_URL", &self.db.url)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SWITCHYARD_DATA_DIR", self.dir.path().join("control"));
        self.control = Some(Proc::spawn("control", cmd).await?);
        Ok(())
    }

    async fn start_worker(&mut self, i: usize) -> Result<()> {
        let state = self.dir.path().join(format!("worker-{i}"));
        let mut subst = vec![
            ("0.0.0.0:8080", format!("127.0.0.1:{}", self.worker_ports[i])),
            ("0.0.0.0:9091", "127.0.0.1:0".to_string()),
            ("https://control:50051", self.control_url()),
            ("/var/lib/switchyard/state", state.display().to_string()),
        ];
        subst.extend(self.cert_paths());
        let mut args = localise(compose_command("worker")?, &subst);
        let prog = args.remove(0);
        let mut cmd = Command::new(bin_path(&prog));
        cmd.args(&args).env("SWITCHYARD_WORKER_ID", format!("worker-{i}"));
        let p = Proc::spawn(&format!("worker-{i}"), cmd).await?;
        if self.workers.len() <= i {
            self.workers.resize_with(i + 1, || None);
        }
        self.workers[i] = Some(p);
        Ok(())
    }

    fn worker_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.worker_ports[i])
    }
}

/// The CLI against control, over mTLS with the admin certificate `certs init` made
/// (`CERTS` is set by the test once the certificates exist).
async fn ctl(control: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let certs = CERTS.get().context("certificates not made yet")?;
    let mut cmd = Command::new(bin_path("switchyard"));
    cmd.arg("--control")
        .arg(control)
        .args(args)
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHYARD_CONTROL_CA", certs.join("ca.pem"))
        .env("SWITCHYARD_CLIENT_CERT", certs.join("admin.pem"))
        .env("SWITCHYARD_CLIENT_KEY", certs.join("admin-key.pem"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!(
            "switchyard {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn chat(http: &reqwest::Client, base: &str, key: &str, model: &str) -> Result<reqwest::StatusCode> {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    let status = r.status();
    r.bytes().await?;
    Ok(status)
}

/// Wait until `model` answers 200 on every listed worker; returns the time it took.
async fn wait_served(
    http: &reqwest::Client,
    bases: &[String],
    key: &str,
    model: &str,
    deadline: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    for base in bases {
        wait_for(&format!("{model} served by {base}"), deadline, || async {
            Ok(chat(http, base, key, model)
                .await
                .ok()
                .filter(|s| s.is_success())
                .map(|_| ()))
        })
        .await?;
    }
    Ok(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_behind_haproxy() -> Result<()> {
    let Some(db) = TestDb::new(DbKind::Postgres).await? else {
        return Ok(()); // printed SKIPPED (only possible outside CI)
    };
    let haproxy = which("haproxy").ok_or_else(|| {
        anyhow!(
            "haproxy is not installed; scripts/ensure-deps.sh installs it (the README test command runs it)"
        )
    })?;

    let mock = switchyard_mock::MockServer::start(switchyard_mock::MockOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    // What compose's one-shot `certs` service runs (its entrypoint in docker-compose.yml).
    let certs = dir.path().join("certs");
    let made = Command::new(bin_path("switchyard"))
        .args(["certs", "init"])
        .arg(&certs)
        .args([
            "--control-name",
            "control",
            "--control-name",
            "localhost",
            "--worker",
            "worker",
        ])
        .output()
        .await?;
    if !made.status.success() {
        bail!("certs init: {}", String::from_utf8_lossy(&made.stderr));
    }
    let compose = std::fs::read_to_string(repo_root().join("docker-compose.yml"))?;
    assert!(
        compose.contains(
            "switchyard certs init /certs --control-name control --control-name localhost --worker worker"
        ),
        "the test makes its certificates as compose's certs service does: keep them in step"
    );
    CERTS.set(certs).ok();
    let control_grpc: SocketAddr = format!("127.0.0.1:{}", stable_port()).parse()?;
    let worker_ports: Vec<u16> = (0..4).map(|_| stable_port()).collect();
    let lb_port = stable_port();
    let stats_sock = dir.path().join("haproxy.sock");

    // deploy/haproxy.cfg, with only the bind address and the server list made local.
    let cfg = std::fs::read_to_string(repo_root().join("deploy/haproxy.cfg"))?;
    let servers: String = worker_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    server worker{} 127.0.0.1:{p} check\n", i + 1))
        .collect();
    let cfg = cfg
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server-template") {
                servers.clone()
            } else if l.trim() == "bind :8080" {
                format!("    bind 127.0.0.1:{lb_port}\n")
            } else if l.trim() == "global" {
                // The runtime API, so the test can wait for haproxy's own view of the servers.
                format!(
                    "{l}\n    stats socket {} mode 600 level user\n",
                    stats_sock.display()
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect::<String>();
    assert!(
        cfg.contains(&format!("bind 127.0.0.1:{lb_port}")),
        "haproxy.cfg has no `bind :8080` line"
    );
    assert!(cfg.contains("stats socket"), "haproxy.cfg has no `global` line");
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg)?;
    // Check the config first: a broken deploy/haproxy.cfg must fail here, with haproxy's words.
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&cfg_path)
        .output()
        .await?;
    assert!(
        check.status.success(),
        "haproxy rejects deploy/haproxy.cfg:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // haproxy logs server state changes to stderr (deploy/haproxy.cfg: `log stderr`).
    let hap_log = dir.path().join("haproxy.log");
    let mut haproxy = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&hap_log)?)
        .kill_on_drop(true)
        .spawn()?;
    let haproxy_up = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", lb_port))
        .await
        .is_err()
    {
        if let Some(status) = haproxy.try_wait()? {
            bail!(
                "haproxy exited ({status}): {}",
                std::fs::read_to_string(&hap_log).unwrap_or_default()
            );
        }
        assert!(
            haproxy_up.elapsed() < Duration::from_secs(10),
            "haproxy does not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }

    let mut c = Cluster {
        dir,
        db,
        control: None,
        control_grpc,
        workers: Vec::new(),
        worker_ports,
        _haproxy: haproxy,
        lb: format!("http://127.0.0.1:{lb_port}"),
    };
    c.start_control().await?;
    for i in 0..3 {
        c.start_worker(i).await?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let control = c.control_url();
    let three: Vec<String> = (0..3).map(|i| c.worker_url(i)).collect();

    // 1. Config made through the CLI is served by all three workers (and through HAProxy).
    let created: serde_json::Value =
        serde_json::from_str(&ctl(&control, &["keys", "create", "cluster", "-o", "json"], &[]).await?)?;
    let key = created["plaintext"]
        .as_str()
        .context("no plaintext in `keys create -o json`")?
        .to_string();
    assert!(key.starts_with("sk-sy-"), "unexpected key format");
    ctl(
        &control,
        &[
            "providers",
            "add",
            "mock",
            "--kind",
            "openai",
            "--base-url",
            &mock.openai_base(),
        ],
        &[],
    )
    .await?;
    ctl(
        &control,
        &["credentials", "add", "mock", "--secret-env", "MOCK_KEY"],
        &[("MOCK_KEY", "sk-upstream-secret-1")],
    )
    .await?;
    ctl(&control, &["models", "add", "m1"], &[]).await?;
    // Propagation = from running the command that makes m1 servable (CLI process start
    // included) until all three workers answer for it.
    let issued = Instant::now();
    ctl(
        &control,
        &[
            "backends",
            "add",
            "m1",
            "--provider",
            "mock",
            "--upstream-model",
            "up-1",
        ],
        &[],
    )
    .await?;
    wait_served(&http, &three, &key, "m1", Duration::from_secs(10)).await?;
    let propagation = issued.elapsed();
    eprintln!("FIGURE cluster.propagation_ms={}", propagation.as_millis());
    assert!(
        propagation < Duration::from_secs(1),
        "propagation took {propagation:?} (budget 1 s)"
    );
    wait_served(
        &http,
        std::slice::from_ref(&c.lb),
        &key,
        "m1",
        Duration::from_secs(10),
    )
    .await?;

    // 1b. Limits across the fleet (issue 18): an RPM, a TPM and a spend limit, each on its
    // own key, driven through HAProxy at twice the limit for the rest of a minute.
    limits_fleet_accuracy(&control, &c.lb).await?;

    // 2. kill -9 one worker under steady load through HAProxy. The load starts only once
    // haproxy itself has all three workers UP: before that it sends every new connection
    // to the ones it has seen pass a check (at 500 ms intervals), and a kill of the only
    // UP worker would fail requests that are not in flight yet.
    wait_for("haproxy sees workers 1-3 UP", Duration::from_secs(10), || async {
        let up = haproxy_up_servers(&stats_sock).await?;
        Ok(["worker1", "worker2", "worker3"]
            .iter()
            .all(|w| up.iter().any(|u| u == w))
            .then_some(()))
    })
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // When each failure happened (ms since the load started) and what it was.
    let failures = Arc::new(std::sync::Mutex::new(Vec::<(u128, String)>::new()));
    let load_start = Instant::now();
    let concurrency = 8;
    let mut load = Vec::new();
    for _ in 0..concurrency {
        // One connection per client (like a real app's keep-alive connection): a client
        // whose connection was pinned to the killed worker loses the request in flight on
        // it; every other request must succeed.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1)
            .build()?;
        let (stop, ok, failed, failures, lb, key) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            failures.clone(),
            c.lb.clone(),
            key.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match chat(&http, &lb, &key, "m1").await {
                    Ok(s) if s.is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let what = match other {
                            Ok(s) => format!("status {s}"),
                            Err(e) => format!("{e:#}"),
                        };
                        failures
                            .lock()
                            .unwrap()
                            .push((load_start.elapsed().as_millis(), what));
                    }
                }
            }
        }));
    }
    wait_for("steady load", Duration::from_secs(10), || async {
        Ok((ok.load(Ordering::Relaxed) > 200).then_some(()))
    })
    .await?;
    let kill_at = load_start.elapsed().as_millis();
    c.workers[0].as_ref().unwrap().signal("KILL").await?;
    let at_kill = ok.load(Ordering::Relaxed);
    wait_for(
        "load continues after the kill",
        Duration::from_secs(10),
        || async { Ok((ok.load(Ordering::Relaxed) > at_kill + 500).then_some(())) },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await?;
    }
    let errors = failed.load(Ordering::Relaxed);
    eprintln!(
        "FIGURE cluster.kill9_errors={errors} (of {} requests, {concurrency} in flight at most)",
        ok.load(Ordering::Relaxed) + errors
    );
    for (at, what) in failures.lock().unwrap().iter().take(12) {
        eprintln!(
            "  client error at kill{:+} ms: {what}",
            *at as i128 - kill_at as i128
        );
    }
    if errors > concurrency {
        let log = std::fs::read_to_string(c.dir.path().join("haproxy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("worker1")).collect();
        eprintln!("haproxy log about worker1:\n{}", lines.join("\n"));
    }
    assert!(
        errors <= concurrency,
        "{errors} client errors; only the {concurrency} in-flight requests may fail"
    );
    c.workers[0] = None;

    // 3 + 4. Control down for 30 s: workers keep serving; a worker restarted meanwhile
    // serves from its state dir.
    let mut control_proc = c.control.take().unwrap();
    control_proc.terminate(Duration::from_secs(15)).await?;
    let down_since = Instant::now();
    let alive = vec![c.worker_url(1), c.worker_url(2)];
    if let Some(w) = c.workers[2].as_mut() {
        w.terminate(Duration::from_secs(15)).await?;
    }
    c.start_worker(2).await?;
    while down_since.elapsed() < Duration::from_secs(30) {
        for base in &alive {
            let s = chat(&http, base, &key, "m1").await?;
            assert!(s.is_success(), "{base} answered {s} while control was down");
        }
        tokio::time::sleep(Duration::from_millis(250)).await; // pacing the probe load, not synchronisation
    }
    c.start_control().await?;
    let restarted = Instant::now();
    ctl(&control, &["models", "add", "m2"], &[]).await?;
    ctl(
        &control,
        &[
            "backends",
            "add",
            "m2",
            "--provider",
            "mock",
            "--upstream-model",
            "up-2",
        ],
        &[],
    )
    .await?;
    // Workers reconnect with capped exponential backoff (5 s + up to 2.5 s jitter after 30 s down).
    wait_served(&http, &alive, &key, "m2", Duration::from_secs(30)).await?;
    eprintln!(
        "FIGURE cluster.after_control_restart_ms={} (control restarted -> change served by the workers)",
        restarted.elapsed().as_millis()
    );

    // 5. A fourth worker started later gets the snapshot and takes traffic via HAProxy.
    c.start_worker(3).await?;
    let four = c.worker_url(3);
    wait_served(
        &http,
        std::slice::from_ref(&four),
        &key,
        "m2",
        Duration::from_secs(10),
    )
    .await?;
    // Requests sent to it directly above are counted too: compare with that baseline.
    // Counted on its ops port: the client port has no /metrics.
    let four_ops = c.workers[3].as_ref().context("worker 4")?.url("ops");
    let metrics = |base: String| {
        let http = http.clone();
        async move {
            let text = http.get(format!("{base}/metrics")).send().await?.text().await?;
            served_requests(&text).ok_or_else(|| anyhow!("no switchyard_requests_total in {base}/metrics"))
        }
    };
    let direct = metrics(four_ops.clone()).await?;
    assert!(direct > 0, "worker 4 served requests but its counter is 0");
    let before = mock.request_count();
    // New TCP connections only: HAProxy balances connections, and pooled keep-alive
    // connections to the first three workers would never reach worker 4.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;
    wait_for(
        "worker 4 takes traffic through haproxy",
        Duration::from_secs(20),
        || async {
            for _ in 0..20 {
                let s = chat(&http, &c.lb, &key, "m2").await?;
                assert!(s.is_success(), "haproxy answered {s}");
            }
            Ok((metrics(four_ops.clone()).await? > direct).then_some(()))
        },
    )
    .await?;
    assert!(mock.request_count() > before);
    Ok(())
}

/// Fleet accuracy of limits leased to three workers behind HAProxy: one key with a
/// requests-per-minute limit, one with tokens per minute, one with a spend budget per
/// minute, each driven at about twice its limit for the rest of the current calendar
/// minute (started with at least 40 s left). What the fleet admitted must be within
/// [95 %, 105 %] of the limit (the upper bound holds by construction: control never
/// leases more than remains). Prints `FIGURE limits ...` lines.
async fn limits_fleet_accuracy(control: &str, lb: &str) -> Result<()> {
    use switchyard_proto::v1::{self as pb, admin_client::AdminClient};
    // The mock's default usage: 12 prompt + 48 completion tokens a request; priced at
    // 1000 and 2000 nano-units a token, 108,000 a request.
    const TOKENS: u64 = 60;
    const COST: u64 = 12 * 1_000 + 48 * 2_000;
    const RPM: u64 = 240;
    let certs = CERTS.get().context("certificates")?;
    let tls = switchyard_proto::channel::ClientTls {
        ca: Some(certs.join("ca.pem")),
        cert: Some(certs.join("admin.pem")),
        key: Some(certs.join("admin-key.pem")),
    };
    let ch = switchyard_proto::channel::endpoint(control, &tls)?
        .connect()
        .await?;
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {ADMIN_TOKEN}").parse()?;
    let mut admin = AdminClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", token.clone());
        Ok(r)
    });
    admin
        .create_model(pb::CreateModelRequest {
            model: Some(pb::Model {
                name: "lm".into(),
                price: Some(pb::Price {
                    input: Some(1_000),
                    output: Some(2_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await?;
    admin
        .create_backend(pb::CreateBackendRequest {
            backend: Some(pb::Backend {
                model: "lm".into(),
                provider: "mock".into(),
                upstream_model: "up-lm".into(),
                ..Default::default()
            }),
        })
        .await?;
    let cases = [
        ("rpm", "requests", RPM, 1),
        ("tpm", "tokens", RPM * TOKENS, TOKENS),
        ("spend", "spend", RPM * COST, COST),
    ];
    let mut keys = Vec::new();
    for (name, kind, amount, _) in cases {
        let k = admin
            .create_api_key(pb::CreateApiKeyRequest {
                name: format!("lim-{name}"),
                ..Default::default()
            })
            .await?
            .into_inner()
            .plaintext;
        admin
            .create_limit(pb::CreateLimitRequest {
                limit: Some(pb::Limit {
                    name: format!("fleet-{name}"),
                    scope: format!("key:lim-{name}"),
                    kind: kind.into(),
                    window: "minute".into(),
                    amount,
                    ..Default::default()
                }),
            })
            .await?;
        keys.push(k);
    }
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // The config reaches every worker: a request through the balancer for each key is
    // answered 200 or 429 (the key and model are known). An admitted one counts in the
    // window it fell in.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut probes = Vec::new();
    for k in &keys {
        let p = wait_for("the limits' keys served", Duration::from_secs(10), || async {
            let s = limited_chat(&http, lb, k).await?;
            Ok((s.is_success() || s == reqwest::StatusCode::TOO_MANY_REQUESTS)
                .then(|| (s.is_success(), now_ms() / 60_000)))
        })
        .await?;
        probes.push(p);
    }
    // Start with at least 40 s left in the minute; stop half a second before it ends.
    if 60_000 - now_ms() % 60_000 < 40_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - now_ms() % 60_000 + 50)).await;
    }
    let window_end = now_ms() / 60_000 * 60_000 + 60_000;
    let stop_at = Instant::now() + Duration::from_millis(window_end - now_ms() - 500);
    let per_key_rate = 2.0 * RPM as f64 / 60.0; // requests a second, at twice the limit
    let clients = 6;
    let mut tasks = Vec::new();
    for (ki, k) in keys.iter().enumerate() {
        for c in 0..clients {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(1)
                .build()?;
            let (k, lb) = (k.clone(), lb.to_string());
            let period = Duration::from_secs_f64(clients as f64 / per_key_rate);
            tasks.push(tokio::spawn(async move {
                // Spread the clients' ticks over one period.
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + period.mul_f64(c as f64 / clients as f64),
                    period,
                );
                let (mut ok, mut refused) = (0u64, 0u64);
                while Instant::now() < stop_at {
                    tick.tick().await; // pacing the load (the limit is per time), not synchronisation
                    match limited_chat(&http, &lb, &k).await {
                        Ok(s) if s.is_success() => ok += 1,
                        Ok(s) if s == reqwest::StatusCode::TOO_MANY_REQUESTS => refused += 1,
                        Ok(s) => return Err(anyhow!("status {s}")),
                        Err(e) => return Err(e),
                    }
                }
                Ok::<_, anyhow::Error>((ki, ok, refused))
            }));
        }
    }
    let mut admitted = [0u64; 3];
    let mut refused = [0u64; 3];
    for t in tasks {
        let (ki, ok, no) = t.await??;
        admitted[ki] += ok;
        refused[ki] += no;
    }
    for (i, (ok, minute)) in probes.into_iter().enumerate() {
        if ok && minute == window_end / 60_000 - 1 {
            admitted[i] += 1;
        }
    }
    for (i, (name, _, amount, unit)) in cases.iter().enumerate() {
        let got = admitted[i] * unit;
        let ratio = got as f64 / *amount as f64;
        eprintln!(
            "FIGURE limits {name} admitted/limit={ratio:.3} ({} of {amount}, {} requests admitted, {} refused)",
            got, admitted[i], refused[i]
        );
        assert!(
            (0.95..=1.05).contains(&ratio),
            "limits {name}: the fleet admitted {got} of {amount} ({ratio:.3})"
        );
    }
    Ok(())
}

/// A chat request to model `lm` that sets `max_tokens` to what the mock answers (48), as
/// a client that cares about its token budget does: the limits' estimate is then close to
/// the real usage (without it, 1024 output tokens are reserved until the request settles).
async fn limited_chat(http: &reqwest::Client, base: &str, key: &str) -> Result<reqwest::StatusCode> {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": "lm", "max_tokens": 48,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    let status = r.status();
    r.bytes().await?;
    Ok(status)
}

/// The servers of backend `workers` that haproxy reports UP, from `show stat` on its
/// runtime API socket (CSV with a `# pxname,svname,...,status,...` header).
async fn haproxy_up_servers(sock: &Path) -> Result<Vec<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .with_context(|| format!("haproxy stats socket {}", sock.display()))?;
    s.write_all(b"show stat\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?; // haproxy closes after one command
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| anyhow!("unexpected `show stat` answer: {out}"))?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| anyhow!("`show stat` has no {name} column"))
    };
    let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&"workers") && f.get(status) == Some(&"UP"))
        .filter_map(|f| f.get(sv).map(|s| s.to_string()))
        .collect())
}

/// Sum of the worker's request counter from its Prometheus text.
/// `None` if the counter is missing altogether (renamed metric).
fn served_requests(metrics: &str) -> Option<u64> {
    let samples: Vec<f64> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("switchyard_requests_total{") || l.starts_with("switchyard_requests_total ")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    let declared = metrics
        .lines()
        .any(|l| l.starts_with("# TYPE switchyard_requests counter"));
    (declared || !samples.is_empty()).then(|| samples.iter().sum::<f64>() as u64)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
