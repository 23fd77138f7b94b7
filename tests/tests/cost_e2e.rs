//! Issue 18 ("Money"), with real processes: control + a worker + the mock upstream.
//!
//! Prices come from a declarative file (a model's price, a backend's price, a model with
//! none) and from `apply --default-prices`; `export` re-applies with no changes. Requests
//! of both dialects, plain and streaming, each under its own key, are booked with their
//! cache-write tokens apart and a cost that `switchyard spend` must show equal to the
//! table below, computed by hand. A price changed with `models set-price` prices the
//! requests after it, and leaves the cost of those before it alone.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{anyhow, bail, Result};
use switchyard_mock::{Behavior, MockOptions, MockServer, Usage};
use switchyard_tests::{bin_path, stable_port, wait_for, DbKind, Proc, TestDb};
use tokio::process::Command;

const ADMIN_TOKEN: &str = "cost-admin-token-0123456789";
const WORKER_TOKEN: &str = "cost-worker-token-0123456789";

/// What the mock reports on every answer. OpenAI: prompt 1000 (300 of them cached), 200
/// completion (50 of them reasoning); its wire format has no cache writes. Anthropic:
/// input 1000, cache reads 300, cache writes 400, output 200, so a prompt of 1700.
const USAGE: Usage = Usage {
    prompt_tokens: 1000,
    completion_tokens: 200,
    cached_tokens: 300,
    reasoning_tokens: 50,
    cache_write_tokens: 400,
};

/// Cost of one request, nano-units (prices are nano-units per token = thousandths of a
/// dollar per million tokens), by hand:
///
/// | key       | price (per Mtok)                                   | uncached in | cached | cache write | output | reasoning | cost |
/// |-----------|----------------------------------------------------|-------------|--------|-------------|--------|-----------|------|
/// | oa-*      | model m-oa: in 2.5, cached 1.25, out 10, reas. 12  | 700×2500    | 300×1250 | 0         | 150×10000 | 50×12000 | 4 225 000 |
/// | an-*      | backend m-an/an: in 3, cached 0.3, write 3.75, out 15 | 1000×3000 | 300×300 | 400×3750 | 200×15000 | 0        | 7 590 000 |
/// | def       | default table gpt-4o-mini: in 0.15, cached 0.075, out 0.6 | 700×150 | 300×75 | 0        | 150×600 | 50×600   |   247 500 |
/// | free      | none                                               |             |        |             |        |           | unpriced |
/// | oa-after  | m-oa after set-price: in 5, out 20 (cached = in, reasoning = out) | 700×5000 | 300×5000 | 0 | 150×20000 | 50×20000 | 9 000 000 |
const OA: u64 = 700 * 2500 + 300 * 1250 + 150 * 10_000 + 50 * 12_000;
const AN: u64 = 1000 * 3000 + 300 * 300 + 400 * 3750 + 200 * 15_000;
const DEF: u64 = 700 * 150 + 300 * 75 + 150 * 600 + 50 * 600;
const OA_AFTER: u64 = 700 * 5000 + 300 * 5000 + 150 * 20_000 + 50 * 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    OaPlain,
    OaStream,
    AnPlain,
    AnStream,
}

struct Env {
    dir: tempfile::TempDir,
    db: TestDb,
    grpc: SocketAddr,
    _control: Option<Proc>,
    _worker: Option<Proc>,
    worker_url: String,
    http: reqwest::Client,
}

impl Env {
    async fn start() -> Result<Env> {
        let mut env = Env {
            dir: tempfile::tempdir()?,
            db: TestDb::new(DbKind::Sqlite).await?.unwrap(),
            grpc: format!("127.0.0.1:{}", stable_port()).parse()?,
            _control: None,
            _worker: None,
            worker_url: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
        };
        let mut cmd = Command::new(bin_path("switchyard-control"));
        cmd.args([
            "--grpc-listen",
            &env.grpc.to_string(),
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--database-url", &env.db.url])
        .arg("--data-dir")
        .arg(env.dir.path().join("control"))
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "info,sqlx=warn");
        env._control = Some(Proc::spawn("control", cmd).await?);
        let mut cmd = Command::new(bin_path("switchyard-worker"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--control",
            &format!("http://{}", env.grpc),
        ])
        .args(["--worker-id", "w0"])
        .arg("--state-dir")
        .arg(env.dir.path().join("w0"))
        .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "info");
        let w = Proc::spawn("w0", cmd).await?;
        env.worker_url = w.url("http");
        env._worker = Some(w);
        Ok(env)
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

    /// Plaintext of each key `apply` created, from its `-o json` answer.
    fn keys(applied: &str) -> Result<BTreeMap<String, String>> {
        let v: serde_json::Value = serde_json::from_str(applied)?;
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

    /// Wait until the worker runs the current config version.
    async fn in_sync(&self) -> Result<()> {
        wait_for("worker in sync", Duration::from_secs(20), || async {
            let v: serde_json::Value = serde_json::from_str(&self.ctl(&["status", "-o", "json"]).await?)?;
            Ok((v["workers_in_sync"] == 1 && v["workers_connected"] == 1).then_some(()))
        })
        .await
    }

    async fn send(&self, key: &str, model: &str, kind: Kind) -> Result<()> {
        let msgs = serde_json::json!([{"role": "user", "content": "hi"}]);
        let (path, body) = match kind {
            Kind::OaPlain => (
                "/v1/chat/completions",
                serde_json::json!({"model": model, "messages": msgs}),
            ),
            Kind::OaStream => (
                "/v1/chat/completions",
                serde_json::json!({"model": model, "messages": msgs, "stream": true}),
            ),
            Kind::AnPlain => (
                "/v1/messages",
                serde_json::json!({"model": model, "max_tokens": 16, "messages": msgs}),
            ),
            Kind::AnStream => (
                "/v1/messages",
                serde_json::json!({"model": model, "max_tokens": 16, "messages": msgs, "stream": true}),
            ),
        };
        let r = self
            .http
            .post(format!("{}{path}", self.worker_url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        if status != 200 {
            bail!("{kind:?} {model}: {status} {text}");
        }
        Ok(())
    }

    /// `switchyard spend --by BY -o json`: group → row.
    async fn spend(&self, by: &str) -> Result<BTreeMap<String, serde_json::Value>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ctl(&["spend", "--by", by, "-o", "json"]).await?)?;
        Ok(v["rows"]
            .as_array()
            .ok_or_else(|| anyhow!("no rows: {v}"))?
            .iter()
            .map(|r| (r["group"].as_str().unwrap_or_default().to_string(), r.clone()))
            .collect())
    }
}

/// (requests, prompt, cached, cache write, completion, reasoning, cost, unpriced) of a row.
type Row = (u64, u64, u64, u64, u64, u64, u64, u64);

fn row(r: &serde_json::Value) -> Row {
    let n = |f: &str| r[f].as_u64().unwrap_or(u64::MAX);
    (
        n("requests"),
        n("prompt_tokens"),
        n("cached_tokens"),
        n("cache_write_tokens"),
        n("completion_tokens"),
        n("reasoning_tokens"),
        n("cost_nano"),
        n("unpriced_requests"),
    )
}

#[tokio::test]
async fn costs_match_the_hand_computed_table() -> Result<()> {
    let mock = MockServer::start(MockOptions {
        default: Some(Behavior {
            usage: USAGE,
            ..Behavior::default()
        }),
        ..MockOptions::default()
    })
    .await?;
    let env = Env::start().await?;
    let file = format!(
        r#"
[[providers]]
name = "oa"
kind = "openai"
base_url = "{oa}"
[[providers.credentials]]
name = "k"
secret_env = "UPSTREAM_KEY"

[[providers]]
name = "an"
kind = "anthropic"
base_url = "{an}"
[[providers.credentials]]
name = "k"
secret_env = "UPSTREAM_KEY"

[[models]]
name = "m-oa"
price = {{ input = 2.5, cached_input = "1.25", output = 10, reasoning = 12 }}
[[models.backends]]
provider = "oa"
upstream_model = "up-oa"

[[models]]
name = "m-an"
[[models.backends]]
provider = "an"
upstream_model = "up-an"
price = {{ input = 3, cached_input = 0.3, cache_write = 3.75, output = 15 }}

[[models]]
name = "m-def"
[[models.backends]]
provider = "oa"
upstream_model = "gpt-4o-mini"

[[models]]
name = "m-free"
[[models.backends]]
provider = "oa"
upstream_model = "local-llama"
"#,
        oa = mock.openai_base(),
        an = mock.url(),
    ) + &[
        "oa-plain",
        "oa-stream",
        "an-plain",
        "an-stream",
        "def",
        "free",
        "oa-after",
    ]
    .iter()
    .map(|k| format!("\n[[keys]]\nname = \"{k}\"\n"))
    .collect::<String>();
    std::fs::write(env.dir.path().join("switchyard.toml"), &file)?;

    // A price that is not exact to 0.001 per million tokens is refused, naming its path.
    let bad = file.replace("input = 3,", "input = 3.0001,");
    std::fs::write(env.dir.path().join("bad.toml"), bad)?;
    let e = env
        .ctl(&["apply", "-f", "bad.toml"])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("models.m-an.backends[0].price.input: `3.0001`"), "{e}");

    let applied = env
        .ctl(&["apply", "-f", "switchyard.toml", "--default-prices", "-o", "json"])
        .await?;
    let keys = Env::keys(&applied)?;

    // The export holds every price (the default one written into the backend) and
    // applies back with no changes.
    let exported = env.ctl(&["export"]).await?;
    assert!(
        exported.contains("[models.price]\ninput = 2.5\ncached_input = 1.25\noutput = 10\nreasoning = 12\n"),
        "{exported}"
    );
    assert!(
        exported.contains("upstream_model = \"gpt-4o-mini\"\n\n[models.backends.price]\ninput = 0.15\ncached_input = 0.075\noutput = 0.6\n"),
        "{exported}"
    );
    std::fs::write(env.dir.path().join("exported.toml"), &exported)?;
    let again = env.ctl(&["apply", "-f", "exported.toml"]).await?;
    assert_eq!(again.trim(), "no changes", "{again}");
    env.in_sync().await?;

    let sends: [(&str, &str, Kind, usize); 6] = [
        ("oa-plain", "m-oa", Kind::OaPlain, 2),
        ("oa-stream", "m-oa", Kind::OaStream, 3),
        ("an-plain", "m-an", Kind::AnPlain, 2),
        ("an-stream", "m-an", Kind::AnStream, 3),
        ("def", "m-def", Kind::OaStream, 1),
        ("free", "m-free", Kind::OaPlain, 2),
    ];
    for (key, model, kind, n) in sends {
        for _ in 0..n {
            env.send(&keys[key], model, kind).await?;
        }
    }

    // A new price applies to the requests after it, not to those before.
    env.ctl(&["models", "set-price", "m-oa", "input=5", "output=20"])
        .await?;
    env.in_sync().await?;
    env.send(&keys["oa-after"], "m-oa", Kind::OaPlain).await?;

    let oa = |n: u64, cost: u64| -> Row { (n, 1000 * n, 300 * n, 0, 200 * n, 50 * n, cost * n, 0) };
    let an = |n: u64| -> Row { (n, 1700 * n, 300 * n, 400 * n, 200 * n, 0, AN * n, 0) };
    let want: BTreeMap<String, Row> = [
        ("oa-plain", oa(2, OA)),
        ("oa-stream", oa(3, OA)),
        ("an-plain", an(2)),
        ("an-stream", an(3)),
        ("def", oa(1, DEF)),
        ("free", (2, 2000, 600, 0, 400, 100, 0, 2)),
        ("oa-after", oa(1, OA_AFTER)),
    ]
    .into_iter()
    .map(|(k, r)| (k.to_string(), r))
    .collect();
    let last = parking_lot::Mutex::new(BTreeMap::new());
    let r = wait_for("every request booked", Duration::from_secs(30), || async {
        let got: BTreeMap<String, Row> = env
            .spend("key")
            .await?
            .iter()
            .map(|(k, r)| (k.clone(), row(r)))
            .collect();
        let same = got == want;
        *last.lock() = got;
        Ok(same.then_some(()))
    })
    .await;
    if r.is_err() {
        bail!("spend by key differs\n want {want:?}\n  got {:?}", last.lock());
    }

    // The other groupings sum the same records.
    let by_model = env.spend("model").await?;
    assert_eq!(by_model["m-oa"]["cost_nano"], 5 * OA + OA_AFTER);
    assert_eq!(by_model["m-an"]["cost_nano"], 5 * AN);
    assert_eq!(by_model["m-an"]["cache_write_tokens"], 5 * 400);
    assert_eq!(by_model["m-free"]["unpriced_requests"], 2);
    let by_backend = env.spend("backend").await?;
    assert_eq!(by_backend["an"]["cost_nano"], 5 * AN);
    let total = 5 * OA + OA_AFTER + 5 * AN + DEF;
    let by_day = env.spend("day").await?;
    assert_eq!(
        by_day
            .values()
            .map(|r| r["cost_nano"].as_u64().unwrap())
            .sum::<u64>(),
        total
    );
    // The table shows the total in dollars, and the unpriced requests apart.
    let table = env.ctl(&["spend", "--by", "none"]).await?;
    let dollars = format!("{}.{:06}", total / 1_000_000_000, total % 1_000_000_000 / 1000);
    assert!(table.contains(&dollars) && table.contains(" 2"), "{table}");
    let usage = env.ctl(&["usage", "--by", "key"]).await?;
    assert!(usage.contains("unpriced"), "{usage}");

    // The default table is printed without a control plane.
    let prices = env.ctl(&["prices"]).await?;
    assert!(
        prices.contains("claude-sonnet-4-5") && prices.contains("gpt-4o-mini"),
        "{prices}"
    );
    Ok(())
}
