//! Issue 18, "exact through a crash", with real processes: control (SQLite) + one worker
//! with a state dir + the mock upstream.
//!
//! Clients drive concurrent load (OpenAI and Anthropic, plain and streaming), each request
//! with its own `x-request-id`; a request counts as answered when its 200 response arrived
//! complete. The worker is killed with SIGKILL in the middle of that load (the reporter
//! batches for a second, so many answered requests are then known only to the dead
//! process's journal), restarted on the same state dir, and control's database must book
//! every answered request exactly once (read directly: `usage_records` by `request_id`).
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    process::Stdio,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Result};
use parking_lot::Mutex;
use switchyard_mock::{Behavior, MockOptions, MockServer, Usage};
use switchyard_tests::{bin_path, stable_port, wait_for, DbKind, Proc, TestDb};
use tokio::process::Command;

const ADMIN_TOKEN: &str = "crash-admin-token-0123456789";
const WORKER_TOKEN: &str = "crash-worker-token-0123456789";

struct Env {
    dir: tempfile::TempDir,
    db: TestDb,
    grpc: SocketAddr,
    _control: Proc,
}

impl Env {
    fn control_url(&self) -> String {
        format!("http://{}", self.grpc)
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

    async fn add_model(&self, p: &str, kind: &str, base: &str) -> Result<()> {
        let model = format!("m-{p}");
        self.ctl(&["providers", "add", p, "--kind", kind, "--base-url", base])
            .await?;
        self.ctl(&["credentials", "add", p, "--secret-env", "UPSTREAM_KEY"])
            .await?;
        self.ctl(&["models", "add", &model]).await?;
        self.ctl(&[
            "backends",
            "add",
            &model,
            "--provider",
            p,
            "--upstream-model",
            &format!("up-{p}"),
        ])
        .await?;
        Ok(())
    }

    async fn start_worker(&self) -> Result<Proc> {
        let mut cmd = Command::new(bin_path("switchyard-worker"));
        cmd.args(["--listen", "127.0.0.1:0", "--control", &self.control_url()])
            .args(["--worker-id", "w-crash"])
            .arg("--state-dir")
            .arg(self.dir.path().join("worker"))
            .env("SWITCHYARD_WORKER_TOKEN", WORKER_TOKEN)
            .env("RUST_LOG", "info,switchyard::access=off");
        Proc::spawn("worker", cmd).await
    }

    /// Booked records per request id, read from control's database.
    async fn booked(&self) -> Result<BTreeMap<String, i64>> {
        use sqlx::{sqlite::SqliteConnectOptions, Connection, Row};
        let opts = SqliteConnectOptions::from_str(&self.db.url)?.read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
        let rows = sqlx::query("SELECT request_id, COUNT(*) AS n FROM usage_records GROUP BY request_id")
            .fetch_all(&mut conn)
            .await?;
        conn.close().await.ok();
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>("request_id"), r.get::<i64, _>("n")))
            .collect())
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    OaPlain,
    OaStream,
    AnPlain,
    AnStream,
}
const KINDS: [Kind; 4] = [Kind::OaPlain, Kind::OaStream, Kind::AnPlain, Kind::AnStream];

/// One request with id `rid`: true when a complete 200 answer arrived.
async fn send(http: &reqwest::Client, base: &str, key: &str, kind: Kind, rid: &str) -> bool {
    let msgs = serde_json::json!([{"role": "user", "content": "hi"}]);
    let (path, body) = match kind {
        Kind::OaPlain => (
            "/v1/chat/completions",
            serde_json::json!({"model": "m-oa", "messages": msgs}),
        ),
        Kind::OaStream => (
            "/v1/chat/completions",
            serde_json::json!({"model": "m-oa", "messages": msgs, "stream": true}),
        ),
        Kind::AnPlain => (
            "/v1/messages",
            serde_json::json!({"model": "m-an", "max_tokens": 16, "messages": msgs}),
        ),
        Kind::AnStream => (
            "/v1/messages",
            serde_json::json!({"model": "m-an", "max_tokens": 16, "messages": msgs, "stream": true}),
        ),
    };
    let Ok(r) = http
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("x-request-id", rid)
        .json(&body)
        .send()
        .await
    else {
        return false;
    };
    if r.status() != 200 {
        return false;
    }
    // Complete: the body ended as HTTP says it ends (length or last chunk), and a stream
    // carried its final event.
    match r.bytes().await {
        Ok(b) => match kind {
            Kind::OaStream => b.ends_with(b"data: [DONE]\n\n"),
            Kind::AnStream => memfind(&b, b"message_stop"),
            _ => !b.is_empty(),
        },
        Err(_) => false,
    }
}

fn memfind(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_answered_request() -> Result<()> {
    let mock = MockServer::start(MockOptions {
        default: Some(Behavior {
            usage: Usage {
                prompt_tokens: 11,
                completion_tokens: 7,
                cached_tokens: 0,
                reasoning_tokens: 0,
                cache_write_tokens: 0,
            },
            ..Behavior::default()
        }),
        ..MockOptions::default()
    })
    .await?;
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
    let env = Env {
        dir,
        db,
        grpc,
        _control: control,
    };
    let out = env.ctl(&["keys", "create", "crash"]).await?;
    let key = out
        .split(|c: char| c.is_whitespace() || c == '"')
        .find(|w| w.starts_with("sk-sy-"))
        .ok_or_else(|| anyhow!("no key in {out}"))?
        .to_string();
    env.add_model("oa", "openai", &mock.openai_base()).await?;
    env.add_model("an", "anthropic", &mock.url()).await?;

    let worker = env.start_worker().await?;
    let base = worker.url("http");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    // Both models on the worker: every kind is answered from here on.
    wait_for("both models served", Duration::from_secs(30), || {
        let (http, base, key) = (&http, &base, &key);
        async move {
            let oa = send(
                http,
                base,
                key,
                Kind::OaPlain,
                &format!("warm-{}", uuid::Uuid::new_v4()),
            )
            .await;
            let an = send(
                http,
                base,
                key,
                Kind::AnPlain,
                &format!("warm-{}", uuid::Uuid::new_v4()),
            )
            .await;
            Ok((oa && an).then_some(()))
        }
    })
    .await?;

    // Load: 16 clients, each request with its own id.
    let answered = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        let (answered, stop, sent) = (answered.clone(), stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let rid = format!("crash-{c}-{i}");
                let kind = KINDS[(c + i) % KINDS.len()];
                sent.fetch_add(1, Ordering::Relaxed);
                if send(&http, &base, &key, kind, &rid).await {
                    answered.lock().insert(rid);
                }
                i += 1;
            }
        }));
    }
    // Kill once a good number were answered and control booked some of them (so the
    // restart finds acknowledged offsets as well as unsent records), the load still
    // running.
    wait_for(
        "answered requests under load, some booked",
        Duration::from_secs(60),
        || {
            let n = answered.lock().len();
            let env = &env;
            async move { Ok((n >= 600 && env.booked().await?.len() >= 100).then_some(())) }
        },
    )
    .await?;
    worker.signal("KILL").await?;
    // Whatever completes after the kill signal was sent completed before the process
    // died; the clients stop on their next error.
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    drop(worker);
    let answered: HashSet<String> = answered.lock().clone();
    let total_sent = sent.load(Ordering::Relaxed);
    let before = env.booked().await?;
    let missing_at_kill = answered.iter().filter(|r| !before.contains_key(*r)).count();

    let restarted = env.start_worker().await?;
    let last = Mutex::new((0usize, 0usize));
    let r = wait_for("every answered request booked", Duration::from_secs(60), || {
        let (env, answered, last) = (&env, &answered, &last);
        async move {
            let booked = env.booked().await?;
            let missing = answered.iter().filter(|r| !booked.contains_key(*r)).count();
            let dups = booked.values().filter(|n| **n > 1).count();
            *last.lock() = (missing, dups);
            Ok((missing == 0).then_some(booked))
        }
    })
    .await;
    let booked = match r {
        Ok(b) => b,
        Err(_) => {
            let (missing, dups) = *last.lock();
            bail!(
                "{missing} of {} answered requests never booked ({dups} booked twice)\nworker log:\n{}",
                answered.len(),
                restarted.stderr_text()
            );
        }
    };
    let twice: Vec<_> = booked.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "booked more than once: {twice:?}");
    // The replay said what it found.
    let log = restarted.stderr_text();
    assert!(
        missing_at_kill == 0 || log.contains("usage journal: records of an earlier run"),
        "{missing_at_kill} answered requests were unbooked at the kill, but no replay was logged:\n{log}"
    );
    println!(
        "FIGURE crash_spool answered={} sent={total_sent} booked_at_kill={} unbooked_at_kill={missing_at_kill} booked_after_restart={} booked_twice=0",
        answered.len(),
        answered.len() - missing_at_kill,
        answered.iter().filter(|r| booked.contains_key(*r)).count()
    );
    // The test proves something only if the kill left records to recover.
    assert!(
        missing_at_kill > 0,
        "every answered request was booked before the kill: the test did not exercise the journal"
    );
    Ok(())
}
