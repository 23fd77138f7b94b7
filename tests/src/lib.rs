//! Shared harness for integration tests that run the real Switchyard binaries.
//!
//! Conventions every server binary follows (control, worker, mock, `switchyard up`):
//! it binds its listeners (port 0 is fine), then prints ONE line to stdout of the form
//! `listening grpc=127.0.0.1:41234 http=127.0.0.1:41235` (keys depend on the binary),
//! and logs everything else to stderr. The harness reads that line; no fixed ports, no sleeps.
//!
//! Binaries are found next to the test executable (`target/<profile>/`). The README's test
//! command builds them first (`cargo build --workspace --bins`).
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

pub mod worker;

use anyhow::{anyhow, bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The repository's root (where `.venv`, `.tools` and `deploy/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a workspace binary built next to the running test executable.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-bin> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found; build it first with `cargo build --workspace --bins` (the README test command does)",
        path.display()
    );
    path
}

/// A loopback port for a process that must come back on the same address (a restart),
/// or that a config names before the process starts (haproxy's server list).
///
/// A port bound at 0 and released comes from the kernel's ephemeral range, where any
/// outgoing connection of any test (or haproxy checking the very port, which can
/// self-connect) may take it while it is free; CI saw a restarted worker fail with
/// `Address already in use`. These ports are picked at random *below* that range, which
/// connects and port-0 binds never use, and are checked free when picked.
pub fn stable_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12_000 {
        (10_000u16, low - 1)
    } else {
        // An unusual range: fall back to the top of the port space above it.
        (61_000u16, 65_000u16)
    };
    for _ in 0..1000 {
        let r = u16::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..2].try_into().unwrap());
        let port = from + r % (to - from);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {from}..{to}");
}

/// A running child process; killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    /// Lines the process wrote to stderr, kept for failure messages.
    pub stderr_log: std::sync::Arc<parking_lot_free::Log>,
}

mod parking_lot_free {
    //! A tiny append-only log shared with the stderr reader task.
    #[derive(Default, Debug)]
    pub struct Log(std::sync::Mutex<Vec<String>>);
    impl Log {
        pub fn push(&self, line: String) {
            if let Ok(mut v) = self.0.lock() {
                if v.len() > 5000 {
                    v.remove(0);
                }
                v.push(line);
            }
        }
        pub fn lines(&self) -> Vec<String> {
            self.0.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }
}

impl Proc {
    /// Spawn `cmd` and wait (up to 60 s) for its `listening ...` line on stdout.
    pub async fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let log = std::sync::Arc::new(parking_lot_free::Log::default());
        let log2 = log.clone();
        let echo = std::env::var_os("SWITCHYARD_TEST_ECHO").is_some();
        let pname = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if echo {
                    eprintln!("[{pname}] {l}");
                }
                log2.push(l);
            }
        });
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match lines.next_line().await? {
                    Some(l) if l.starts_with("listening ") => return Ok::<_, std::io::Error>(Some(l)),
                    Some(_) => continue,
                    None => return Ok(None),
                }
            }
        })
        .await;
        let line = match first {
            Ok(Ok(Some(l))) => l,
            other => {
                tokio::time::sleep(Duration::from_millis(50)).await; // let stderr drain for the message
                bail!(
                    "{name} did not print its listening line ({other:?}); stderr:\n{}",
                    log.lines().join("\n")
                )
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        let log3 = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                log3.push(format!("[stdout] {l}"));
            }
        });
        let addrs = parse_listening(&line)?;
        Ok(Proc {
            name: name.to_string(),
            child,
            addrs,
            stderr_log: log,
        })
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        *self
            .addrs
            .get(key)
            .unwrap_or_else(|| panic!("{} printed no `{key}=` address: {:?}", self.name, self.addrs))
    }

    pub fn url(&self, key: &str) -> String {
        format!("http://{}", self.addr(key))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Send a signal (e.g. "TERM", "KILL") with the system `kill`.
    pub async fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill -{sig} {} failed", self.pid());
        }
        Ok(())
    }

    /// SIGTERM and wait for exit (up to `timeout`); returns the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.signal("TERM").await?;
        Ok(tokio::time::timeout(timeout, self.child.wait())
            .await
            .context("process did not exit in time")??)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_log.lines().join("\n")
    }
}

/// Parse `listening a=1.2.3.4:5 b=...`.
pub fn parse_listening(line: &str) -> Result<HashMap<String, SocketAddr>> {
    let mut out = HashMap::new();
    for part in line.split_whitespace().skip(1) {
        if let Some((k, v)) = part.split_once('=') {
            out.insert(
                k.to_string(),
                v.parse().with_context(|| format!("bad address in {line:?}"))?,
            );
        }
    }
    Ok(out)
}

/// Poll `f` every 20 ms until it returns `Ok(Some(v))`, or fail after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}; last error: {last_err:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// The Postgres server URL for tests, from `SWITCHYARD_TEST_POSTGRES_URL` or `DATABASE_URL`.
pub fn postgres_base_url() -> Option<String> {
    std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
        .ok()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| u.starts_with("postgres"))
}

/// A fresh database for one test: an SQLite file in a temp dir, or a new Postgres
/// database (`sy_test_<uuid>`) on the test server, dropped afterwards.
pub struct TestDb {
    pub kind: DbKind,
    pub url: String,
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>, // (server url, db name)
}

impl TestDb {
    /// `None` means "skip": Postgres was asked for but is not configured. In CI (`CI` set)
    /// a missing Postgres is an error instead, because CI must run the Postgres suite.
    pub async fn new(kind: DbKind) -> Result<Option<TestDb>> {
        let dir = tempfile::tempdir()?;
        match kind {
            DbKind::Sqlite => {
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("switchyard.db").display());
                Ok(Some(TestDb {
                    kind,
                    url,
                    dir,
                    pg: None,
                }))
            }
            DbKind::Postgres => {
                let Some(base) = postgres_base_url() else {
                    if std::env::var_os("CI").is_some() {
                        bail!("CI is set but no Postgres URL (SWITCHYARD_TEST_POSTGRES_URL / DATABASE_URL)");
                    }
                    eprintln!(
                        "SKIPPED (postgres): set DATABASE_URL=postgres://... to run this test on Postgres"
                    );
                    return Ok(None);
                };
                let name = format!("sy_test_{}", uuid::Uuid::new_v4().simple());
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&base)
                    .await
                    .context("connect to test postgres")?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await.ok();
                let url = replace_db_name(&base, &name);
                Ok(Some(TestDb {
                    kind,
                    url,
                    dir,
                    pg: Some((base, name)),
                }))
            }
        }
    }
}

/// Swap the database name in a postgres URL.
pub fn replace_db_name(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/db
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, name)) = self.pg.take() {
            // Best effort, on a separate thread so it works inside or outside a runtime.
            let _ = std::thread::spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Generate `<name>_sqlite` and `<name>_postgres` tokio tests from one async body that
/// takes a `TestDb`. The Postgres variant prints SKIPPED and passes when Postgres is not
/// configured outside CI.
#[macro_export]
macro_rules! store_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                let db = $crate::TestDb::new($crate::DbKind::Sqlite)
                    .await?
                    .expect("sqlite always runs");
                ($body)(db).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                match $crate::TestDb::new($crate::DbKind::Postgres).await? {
                    Some(db) => ($body)(db).await,
                    None => Ok(()),
                }
            }
        }
    };
}
