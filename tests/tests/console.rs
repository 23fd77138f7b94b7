//! Issue 20's web console, in a real headless Chromium against real processes: control
//! (with an admin token), two workers and two mock upstreams, one of which fails its
//! health probes. `tests/console/drive.js` (playwright-core, installed into
//! `.tools/playwright` by scripts/ensure-deps.sh, driving Debian's `/usr/bin/chromium`)
//! logs in with a wrong token and then the right one, opens every page, saves a
//! screenshot of each under `tests/artefacts/console/`, and reports what the pages showed
//! and every browser console error; this test checks that against the CLI.
//!
//! Also here: the shipped Grafana dashboard's queries name only metrics that the running
//! control and worker export.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use switchyard_mock::{Behavior, MockOptions, MockServer, Usage};
use switchyard_tests::repo_root;
use switchyard_tests::{bin_path, stable_port, wait_for, DbKind, Proc, TestDb};
use tokio::process::Command;

const ADMIN_TOKEN: &str = "console-admin-token-0123456789";
const WORKER_TOKEN: &str = "console-worker-token-0123456789";

const USAGE: Usage = Usage {
    prompt_tokens: 1000,
    completion_tokens: 200,
    cached_tokens: 300,
    reasoning_tokens: 50,
    cache_write_tokens: 0,
};

struct Env {
    dir: tempfile::TempDir,
    _db: TestDb,
    grpc: SocketAddr,
    control: Proc,
    workers: Vec<Proc>,
    http: reqwest::Client,
}

impl Env {
    async fn start(workers: usize) -> Result<Env> {
        let dir = tempfile::tempdir()?;
        let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
        let grpc: SocketAddr = format!("127.0.0.1:{}", stable_port()).parse()?;
        let mut cmd = Command::new(bin_path("switchyard-control"));
        cmd.args(["--grpc-listen", &grpc.to_string(), "--http-listen", "127.0.0.1:0"])
            .args(["--database-url", &db.url])
            .arg("--data-dir")
            .arg(dir.path().join("control"))
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
            .env("RUST_LOG", "info,sqlx=warn");
        let control = Proc::spawn("control", cmd).await?;
        let mut ws = Vec::new();
        for i in 0..workers {
            let mut cmd = Command::new(bin_path("switchyard-worker"));
            cmd.args([
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
                "--control",
                &format!("http://{grpc}"),
            ])
            .args(["--worker-id", &format!("w{i}")])
            .arg("--state-dir")
            .arg(dir.path().join(format!("w{i}")))
            .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
            .env("RUST_LOG", "info");
            ws.push(Proc::spawn(&format!("w{i}"), cmd).await?);
        }
        Ok(Env {
            dir,
            _db: db,
            grpc,
            control,
            workers: ws,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
        })
    }

    async fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin_path("switchyard"))
            .arg("--control")
            .arg(format!("http://{}", self.grpc))
            .args(args)
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("UPSTREAM_KEY", "sk-upstream-secret")
            .current_dir(self.dir.path())
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

    async fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.ctl(&a).await?)?)
    }

    /// Apply the cluster's config: a priced model over two tiers, a model on the
    /// provider whose probes will fail, two keys. Returns key name → plaintext.
    async fn apply(&self, ok: &MockServer, sick: &MockServer) -> Result<BTreeMap<String, String>> {
        let file = format!(
            r#"
[[providers]]
name = "oa"
kind = "openai"
base_url = "{oa}"
[[providers.credentials]]
name = "k1"
secret_env = "UPSTREAM_KEY"
weight = 2

[[providers]]
name = "oa-backup"
kind = "openai"
base_url = "{oa}"
[[providers.credentials]]
name = "k1"
secret_env = "UPSTREAM_KEY"

[[providers]]
name = "hp"
kind = "openai"
base_url = "{hp}"
health = {{ probe = "chat:up-h", interval = "300ms", timeout = "250ms" }}
[[providers.credentials]]
name = "k1"
secret_env = "UPSTREAM_KEY"

[[models]]
name = "m-oa"
strategy = "weighted_round_robin"
price = {{ input = 2.5, cached_input = 1.25, output = 10 }}
[[models.backends]]
provider = "oa"
upstream_model = "up-oa"
weight = 3
[[models.backends]]
provider = "oa-backup"
upstream_model = "up-oa"
priority = 1

[[models]]
name = "m-h"
[[models.backends]]
provider = "hp"
upstream_model = "up-h"

[[keys]]
name = "ka"

[[keys]]
name = "kb"
"#,
            oa = ok.openai_base(),
            hp = sick.openai_base(),
        );
        std::fs::write(self.dir.path().join("switchyard.toml"), file)?;
        let v = self.ctl_json(&["apply", "-f", "switchyard.toml"]).await?;
        Ok(v["created_keys"]
            .as_array()
            .ok_or_else(|| anyhow!("no created_keys in {v}"))?
            .iter()
            .map(|k| {
                (
                    k["name"].as_str().unwrap().to_string(),
                    k["plaintext"].as_str().unwrap().to_string(),
                )
            })
            .collect())
    }

    async fn in_sync(&self) -> Result<()> {
        let n = self.workers.len() as u64;
        wait_for("workers in sync", Duration::from_secs(30), || async {
            let v = self.ctl_json(&["status"]).await?;
            Ok((v["workers_in_sync"] == n && v["workers_connected"] == n).then_some(()))
        })
        .await
    }

    /// One chat completion through worker `w`; returns the status.
    async fn send(&self, w: usize, key: &str, model: &str, stream: bool) -> Result<u16> {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.workers[w].url("http")))
            .bearer_auth(key)
            .json(&serde_json::json!({
                "model": model, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
            }))
            .send()
            .await?;
        let status = r.status().as_u16();
        r.bytes().await?;
        Ok(status)
    }

    /// (healthy, total) workers of `model`'s backend, from `switchyard health`.
    async fn backend_health(&self, model: &str) -> Result<(u64, u64)> {
        let v = self.ctl_json(&["health", "--model", model]).await?;
        let t = v
            .as_array()
            .and_then(|a| a.iter().find(|t| t["kind"] == "backend"))
            .ok_or_else(|| anyhow!("no backend target in {v}"))?;
        Ok((
            t["healthy_workers"].as_u64().unwrap_or(99),
            t["total_workers"].as_u64().unwrap_or(99),
        ))
    }

    fn control_http(&self) -> String {
        self.control.url("http")
    }
}

/// The console driver, or why it cannot run.
fn driver() -> Result<(PathBuf, PathBuf)> {
    let pw = repo_root().join(".tools/playwright/node_modules/playwright-core");
    if !pw.exists() {
        bail!(
            "{} is missing: run scripts/ensure-deps.sh (installs playwright-core and chromium)",
            pw.display()
        );
    }
    if !Path::new("/usr/bin/chromium").exists() {
        bail!("/usr/bin/chromium is missing: run scripts/ensure-deps.sh as root (apt-get install chromium)");
    }
    Ok((pw, repo_root().join("tests/console/drive.js")))
}

/// The rows of a page whose `data-<attr>` is set: that value → the row.
fn rows_by<'a>(page: &'a Value, attr: &str) -> BTreeMap<String, &'a Value> {
    page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["data"][attr].as_str()?.to_string(), r)))
        .collect()
}

fn col(row: &Value, c: &str) -> u64 {
    row["cols"][c]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() -> Result<()> {
    let (playwright, script) = driver()?;
    let ok = MockServer::start(MockOptions {
        default: Some(Behavior {
            usage: USAGE,
            ..Behavior::default()
        }),
        ..MockOptions::default()
    })
    .await?;
    let sick = MockServer::start(MockOptions::default()).await?;
    let env = Env::start(2).await?;
    let keys = env.apply(&ok, &sick).await?;
    env.in_sync().await?;
    wait_for("m-h healthy on both workers", Duration::from_secs(20), || async {
        Ok((env.backend_health("m-h").await? == (2, 2)).then_some(()))
    })
    .await?;

    // Traffic: plain and streamed, on both workers, under two keys.
    let mut sent = 0u64;
    for (w, key, stream, n) in [
        (0, "ka", false, 3),
        (1, "ka", true, 2),
        (0, "kb", true, 2),
        (1, "kb", false, 1),
    ] {
        for _ in 0..n {
            assert_eq!(env.send(w, &keys[key], "m-oa", stream).await?, 200);
            sent += 1;
        }
    }
    // The failed upstream: its probes fail on both workers, and requests to it fail.
    sick.set_default(Behavior::error(503));
    wait_for(
        "m-h unhealthy on both workers",
        Duration::from_secs(30),
        || async { Ok((env.backend_health("m-h").await? == (0, 2)).then_some(())) },
    )
    .await?;
    let mut failed = 0u64;
    for w in 0..2 {
        let s = env.send(w, &keys["kb"], "m-h", false).await?;
        assert!(s >= 500, "a request to the failed upstream answered {s}");
        failed += 1;
    }
    let usage = wait_for("every request booked", Duration::from_secs(30), || async {
        let v = env.ctl_json(&["usage", "--by", "key"]).await?;
        let n: u64 = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        Ok((n == sent + failed).then_some(v))
    })
    .await?;
    let by_model = env.ctl_json(&["usage", "--by", "model"]).await?;
    let version = env.ctl_json(&["status"]).await?["version"].as_u64().unwrap();

    // The browser.
    let out = repo_root().join("tests/artefacts/console");
    std::fs::create_dir_all(&out)?;
    let args = serde_json::json!({
        "base": env.control_http(),
        "token": ADMIN_TOKEN,
        "wrong": "console-admin-token-0123456788",
        "out": out,
    });
    let run = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg(&script)
            .arg(&playwright)
            .arg(args.to_string())
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .context("the browser driver did not finish in 120 s")??;
    if !run.status.success() {
        bail!(
            "drive.js failed ({}): {}\ncontrol log:\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr),
            env.control.stderr_text()
        );
    }
    let r: Value = serde_json::from_slice(&run.stdout)
        .with_context(|| format!("drive.js printed: {}", String::from_utf8_lossy(&run.stdout)))?;
    eprintln!("screenshots in {}", out.display());

    // A wrong token: 401, no data on that page or any other, no cookie.
    let wrong = &r["wrong"];
    assert_eq!(wrong["redirectedTo"], "/console/login", "{wrong}");
    assert_eq!(wrong["status"], 401, "{wrong}");
    assert!(
        wrong["message"].as_str().unwrap().contains("Wrong token"),
        "{wrong}"
    );
    assert_eq!(wrong["rows"], serde_json::json!([]), "{wrong}");
    assert_eq!(wrong["afterPath"], "/console/login", "{wrong}");
    assert_eq!(wrong["afterRows"], serde_json::json!([]), "{wrong}");
    assert_eq!(wrong["cookies"], serde_json::json!([]), "{wrong}");
    // The only thing the browser may complain about there is the 401 itself.
    for e in r["wrongErrors"].as_array().unwrap() {
        assert!(e.as_str().unwrap().contains("401"), "{e}");
    }

    // The right token: a session cookie that is not the token and that scripts cannot read.
    assert_eq!(r["loggedInAt"], "/console/fleet", "{r}");
    let cookies = r["cookies"].as_array().unwrap();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0]["httpOnly"], true);
    assert_eq!(cookies[0]["sameSite"], "Strict");
    let sid = cookies[0]["value"].as_str().unwrap();
    assert!(sid.len() == 64 && !sid.contains(ADMIN_TOKEN), "{sid}");
    assert_eq!(r["documentCookie"], "");
    assert_eq!(r["errors"], serde_json::json!([]), "browser console errors");
    for (name, p) in r["pages"].as_object().unwrap() {
        assert_eq!(p["status"], 200, "{name}");
        assert_eq!(p["scripts"], 0, "{name} carries a script");
        assert!(
            !p["text"].as_str().unwrap().contains(ADMIN_TOKEN)
                && !p["text"].as_str().unwrap().contains("sk-upstream-secret"),
            "{name} shows a secret"
        );
    }
    assert_eq!(r["afterLogout"], "/console/login");

    // Fleet: both workers, in sync at the current version.
    let fleet = rows_by(&r["pages"]["fleet"], "worker");
    assert_eq!(fleet.keys().collect::<Vec<_>>(), ["w0", "w1"], "{fleet:?}");
    for w in fleet.values() {
        assert_eq!(col(w, "applied"), version, "{w}");
        assert_eq!(w["cols"]["state"], "in sync", "{w}");
        assert_eq!(w["cols"]["rejection"], "-", "{w}");
    }

    // Health: the failed backend (and its credential) healthy on 0 of 2, with a red
    // stretch and the changes listed; the healthy ones on 2 of 2 with none.
    let health_page = &r["pages"]["health"];
    let health = rows_by(health_page, "target");
    for sickly in ["backend:m-h/hp", "credential:hp/k1"] {
        let t = health
            .get(sickly)
            .ok_or_else(|| anyhow!("no {sickly} in {health:?}"))?;
        assert_eq!(
            (t["data"]["healthy"].as_str(), t["data"]["total"].as_str()),
            (Some("0"), Some("2")),
            "{t}"
        );
        assert!(t["unhealthyRects"].as_u64().unwrap() >= 1, "{t}");
        assert!(t["data"]["changes"].as_str().unwrap().parse::<u64>()? >= 2, "{t}");
    }
    for fine in ["backend:m-oa/oa", "backend:m-oa/oa-backup", "credential:oa/k1"] {
        let t = health
            .get(fine)
            .ok_or_else(|| anyhow!("no {fine} in {health:?}"))?;
        assert_eq!(
            (t["data"]["healthy"].as_str(), t["data"]["total"].as_str()),
            (Some("2"), Some("2")),
            "{t}"
        );
        assert_eq!(t["unhealthyRects"], 0, "{t}");
    }
    let text = health_page["text"].as_str().unwrap();
    assert!(
        text.contains("unhealthy on w0") && text.contains("unhealthy on w1"),
        "{text}"
    );
    assert!(text.contains("503"), "the reasons are shown: {text}");

    // Traffic: the table equals `switchyard usage`, by key and by model.
    for (page, cli) in [("traffic", &usage), ("traffic-model", &by_model)] {
        let shown = rows_by(&r["pages"][page], "group");
        let want: BTreeMap<String, &Value> = cli["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["group"].as_str().unwrap().to_string(), r))
            .collect();
        assert_eq!(
            shown.keys().collect::<BTreeSet<_>>(),
            want.keys().collect(),
            "{page}"
        );
        let mut total = BTreeMap::new();
        for (g, w) in &want {
            for c in [
                "requests",
                "errors",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "cost_nano",
                "unpriced_requests",
            ] {
                assert_eq!(col(shown[g], c), w[c].as_u64().unwrap(), "{page} {g} {c}");
                *total.entry(c).or_insert(0) += w[c].as_u64().unwrap();
            }
        }
        let foot = r["pages"][page]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "traffic-total")
            .unwrap();
        for (c, v) in total {
            assert_eq!(col(foot, c), v, "{page} total {c}");
        }
    }
    assert_eq!(
        col(rows_by(&r["pages"]["traffic"], "group")["kb"], "errors"),
        failed
    );
    assert!(col(rows_by(&r["pages"]["traffic"], "group")["ka"], "cost_nano") > 0);

    // Config: both models, the tiers and weights of m-oa's backends.
    let config = &r["pages"]["config"];
    let models = rows_by(config, "model");
    assert!(
        models.contains_key("m-oa") && models.contains_key("m-h"),
        "{models:?}"
    );
    let backends = rows_by(config, "backend");
    assert_eq!(
        (col(backends["oa"], "tier"), col(backends["oa"], "weight")),
        (0, 3)
    );
    assert_eq!(
        (
            col(backends["oa-backup"], "tier"),
            col(backends["oa-backup"], "weight")
        ),
        (1, 1)
    );
    assert!(config["text"].as_str().unwrap().contains("weighted_round_robin"));
    Ok(())
}

/// Metric names that `/metrics` text exports: each sample's name, and for a family
/// declared with `# TYPE`, the names its samples take (`_total`, `_bucket`, ...).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if !l.starts_with('#') && !l.is_empty() {
            let name: String = l.chars().take_while(|c| *c != '{' && *c != ' ').collect();
            out.insert(name);
        }
    }
    out
}

/// Every PromQL expression of a Grafana dashboard: panel targets (rows' nested panels
/// too) and query variables.
fn dashboard_queries(d: &Value) -> Vec<String> {
    fn panels(ps: &Value, out: &mut Vec<String>) {
        for p in ps.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"].as_str().or_else(|| v["query"]["query"].as_str());
            out.extend(q.map(String::from));
        }
    }
    out
}

/// The identifiers in a PromQL expression that name Switchyard metrics.
fn metric_names(expr: &str) -> Vec<String> {
    let re = regex::Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*").unwrap();
    re.find_iter(expr)
        .map(|m| m.as_str().to_string())
        .filter(|n| n.starts_with("switchyard_"))
        .collect()
}

#[test]
fn metric_names_are_read_from_exposition_and_promql() {
    let text = "# TYPE switchyard_requests counter\nswitchyard_requests_total{a=\"b\"} 1\n\
                # TYPE switchyard_lat_seconds histogram\n# TYPE switchyard_up gauge\nswitchyard_up 1\n";
    let n = exported_names(text);
    for want in [
        "switchyard_requests_total",
        "switchyard_lat_seconds_bucket",
        "switchyard_up",
    ] {
        assert!(n.contains(want), "{n:?}");
    }
    assert!(!n.contains("switchyard_requests"));
    assert_eq!(
        metric_names("sum by (le) (rate(switchyard_lat_seconds_bucket{x=~\"$i\"}[5m])) / max(switchyard_up)"),
        ["switchyard_lat_seconds_bucket", "switchyard_up"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_name_exported_metrics() -> Result<()> {
    let path = repo_root().join("deploy/grafana/switchyard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 10, "{queries:?}");

    // A cluster with some traffic, so that labelled families have samples.
    let ok = MockServer::start(MockOptions::default()).await?;
    let sick = MockServer::start(MockOptions::default()).await?;
    let env = Env::start(1).await?;
    let keys = env.apply(&ok, &sick).await?;
    env.in_sync().await?;
    assert_eq!(env.send(0, &keys["ka"], "m-oa", true).await?, 200);
    // An upstream error (the next answer of `ok` is a 503), for the families that count
    // failures and retries.
    ok.push(Behavior::error(503));
    env.send(0, &keys["ka"], "m-oa", false).await?;
    assert!(ok.stats().by_status.contains_key(&503), "{:?}", ok.stats());
    let get = |url: String| {
        let http = env.http.clone();
        async move { Ok::<_, anyhow::Error>(http.get(url).send().await?.error_for_status()?.text().await?) }
    };
    let mut names = exported_names(&get(format!("{}/metrics", env.workers[0].url("ops"))).await?);
    names.extend(exported_names(
        &get(format!("{}/metrics", env.control_http())).await?,
    ));
    let mut unknown = BTreeSet::new();
    let mut used = 0;
    for q in &queries {
        for n in metric_names(q) {
            used += 1;
            if !names.contains(&n) {
                unknown.insert(n);
            }
        }
    }
    assert!(
        used >= queries.len(),
        "queries without a switchyard metric: {queries:?}"
    );
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exports: {unknown:?}"
    );
    Ok(())
}
