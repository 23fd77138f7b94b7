//! Issue 19, the worker's side of running on a real network: the ops listener apart from
//! client traffic, egress through an outbound proxy (a real `tinyproxy`), upstreams
//! behind a private CA and with mTLS (the mock serving TLS with certificates `switchyard
//! certs init` makes), the sealed last-known-good snapshot, and no secret in the logs, the
//! state file or the database.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use control_common::{admin, assert_status, spawn_control, ADMIN_TOKEN, WORKER_TOKEN};
use serde_json::{json, Value};
use switchyard_mock::{MockOptions, MockServer, MockTls};
use switchyard_proto::v1 as pb;
use switchyard_tests::{
    bin_path, stable_port, wait_for,
    worker::{backend, key, model, provider, snapshot, start_with_snapshot, start_worker},
    DbKind, Proc, TestDb,
};
use tokio::process::{Child, Command};

const KEY: &str = "sk-sy-security-test-key-0123456789";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// One chat request for `model`: (status, body).
async fn chat(c: &reqwest::Client, base: &str, model: &str) -> Result<(u16, String)> {
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

/// A private CA, a server certificate for 127.0.0.1 (`control.pem`) and a client
/// certificate (`admin.pem`), made by `switchyard certs init` (rcgen).
async fn make_certs(dir: &Path) -> Result<PathBuf> {
    let certs = dir.join("certs");
    let out = Command::new(bin_path("switchyard"))
        .args(["certs", "init"])
        .arg(&certs)
        .args(["--control-name", "127.0.0.1", "--worker", "w"])
        .output()
        .await?;
    if !out.status.success() {
        bail!("certs init: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(certs)
}

fn s(p: PathBuf) -> String {
    p.display().to_string()
}

/// A mock serving HTTPS with the certificate for 127.0.0.1; with `mtls`, it requires a
/// client certificate signed by the same CA.
async fn tls_mock(certs: &Path, mtls: bool) -> Result<MockServer> {
    Ok(MockServer::start(MockOptions {
        tls: Some(MockTls {
            cert: certs.join("control.pem"),
            key: certs.join("control-key.pem"),
            client_ca: mtls.then(|| certs.join("ca.pem")),
        }),
        ..Default::default()
    })
    .await?)
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

/// A real `tinyproxy` on a loopback port, with basic auth and a log of what it proxied.
struct Tinyproxy {
    _child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    async fn start(dir: &Path, user: &str, password: &str) -> Result<Tinyproxy> {
        let bin = which("tinyproxy").ok_or_else(|| {
            anyhow!("tinyproxy is not installed; scripts/ensure-deps.sh installs it (the README test command runs it)")
        })?;
        let port = stable_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\n\
                 MaxClients 50\nAllow 127.0.0.1\nBasicAuth {user} {password}\n",
                log.display()
            ),
        )?;
        let mut child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let up = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "tinyproxy exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if up.elapsed() > Duration::from_secs(10) {
                bail!("tinyproxy does not listen on {port}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
        Ok(Tinyproxy {
            _child: child,
            port,
            log,
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Wait until the worker's stderr has a line containing every `needle`.
async fn logged(w: &Proc, needles: &[&str]) -> Result<String> {
    wait_for(
        &format!("worker log line with {needles:?}"),
        Duration::from_secs(10),
        || async {
            Ok(w.stderr_log
                .lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n))))
        },
    )
    .await
    .with_context(|| format!("worker stderr:\n{}", w.stderr_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_port_has_the_detail_and_the_client_port_only_counts() -> Result<()> {
    let mock = MockServer::start(MockOptions::default()).await?;
    let snap = snapshot(
        1,
        vec![provider(
            "secret-provider",
            "openai",
            &mock.openai_base(),
            &[("secret-credential", "sk-upstream-0123456789abcdef")],
        )],
        vec![model(
            "m",
            "",
            vec![backend("secret-backend", "secret-provider", "mock-model", 1, 0)],
        )],
        vec![key("k", KEY, &[])],
    );
    let (w, _dir) = start_with_snapshot(&snap, &[]).await?;
    let (base, ops) = (w.url("http"), w.url("ops"));
    assert_ne!(base, ops);
    let c = client();
    assert_eq!(chat(&c, &base, "m").await?.0, 200);

    // The client port: no /metrics, a /health of counts only.
    let r = c.get(format!("{base}/metrics")).send().await?;
    assert_eq!(r.status(), 404);
    let text = c.get(format!("{base}/health")).send().await?.text().await?;
    let h: Value = serde_json::from_str(&text)?;
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["backends"], json!({"healthy": 1, "total": 1}), "{h}");
    assert_eq!(h["credentials"], json!({"healthy": 1, "total": 1}), "{h}");
    for name in [
        "secret-provider",
        "secret-credential",
        "secret-backend",
        "mock-model",
        "models",
        "providers",
    ] {
        assert!(
            !text.contains(name),
            "the client port's /health shows {name}: {text}"
        );
    }
    assert_eq!(c.get(format!("{base}/ready")).send().await?.status(), 200);

    // The ops port: the detail and the metrics, and nothing of the client API.
    let h: Value = c.get(format!("{ops}/health")).send().await?.json().await?;
    assert_eq!(h["models"]["m"]["backends"][0]["name"], "secret-backend", "{h}");
    assert_eq!(
        h["providers"][0]["credentials"][0]["name"], "secret-credential",
        "{h}"
    );
    let r = c.get(format!("{ops}/metrics")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(r.text().await?.contains("switchyard_requests_total"));
    assert_eq!(c.get(format!("{ops}/ready")).send().await?.status(), 200);
    let r = c
        .post(format!("{ops}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_reach_their_upstreams_through_tinyproxy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = make_certs(dir.path()).await?;
    let https = tls_mock(&certs, false).await?;
    let plain = MockServer::start(MockOptions::default()).await?;
    let tp = Tinyproxy::start(dir.path(), "egress", "tp-password-0123456789").await?;
    let proxy = format!("http://egress@127.0.0.1:{}", tp.port);
    let via = |name: &str, base: &str, password: &str| {
        let mut p = provider(name, "openai", base, &[("c", "sk-upstream-0123456789abcdef")]);
        p.proxy = proxy.clone();
        p.proxy_password = password.into();
        p.ca_file = s(certs.join("ca.pem"));
        p
    };
    let snap = snapshot(
        1,
        vec![
            via("tunnel", &https.openai_base(), "tp-password-0123456789"),
            via("absolute", &plain.openai_base(), "tp-password-0123456789"),
            via("refused", &https.openai_base(), "not-the-password"),
        ],
        vec![
            model("s", "", vec![backend("s", "tunnel", "mock-model", 1, 0)]),
            model("p", "", vec![backend("p", "absolute", "mock-model", 1, 0)]),
            model("x", "", vec![backend("x", "refused", "mock-model", 1, 0)]),
        ],
        vec![key("k", KEY, &[])],
    );
    let (w, _state) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();

    // https: a CONNECT tunnel through the proxy, TLS to the upstream inside it.
    for _ in 0..3 {
        let (st, body) = chat(&c, &base, "s").await?;
        assert_eq!(st, 200, "{body}");
    }
    assert_eq!(https.request_count(), 3);
    let connect = format!("CONNECT 127.0.0.1:{}", https.url().rsplit(':').next().unwrap());
    let log = tp.log_text();
    // Pooled: one tunnel carried the three requests.
    assert_eq!(log.matches(&connect).count(), 1, "tinyproxy log:\n{log}");

    // http: absolute-form requests to the proxy, which adds its Via header.
    let (st, body) = chat(&c, &base, "p").await?;
    assert_eq!(st, 200, "{body}");
    let seen = plain.requests();
    let via_header = seen[0]
        .headers
        .iter()
        .find(|(n, _)| n == "via")
        .map(|(_, v)| v.clone());
    assert!(
        via_header.as_deref().is_some_and(|v| v.contains("tinyproxy")),
        "the mock saw no Via from tinyproxy: {:?}",
        seen[0].headers
    );
    assert!(
        tp.log_text()
            .contains(&format!("POST {}/chat/completions", plain.openai_base())),
        "{}",
        tp.log_text()
    );

    // A proxy that refuses the credentials: 502, and the worker's log says why.
    let (st, body) = chat(&c, &base, "x").await?;
    assert_eq!(st, 502, "{body}");
    assert!(!body.contains("127.0.0.1"), "the client sees no address: {body}");
    // (tinyproxy answers a CONNECT with bad credentials 401, not 407.)
    logged(
        &w,
        &["upstream attempt failed", "backend=x", "CONNECT answered 40"],
    )
    .await?;
    assert!(!w.stderr_text().contains("not-the-password"));
    assert!(!w.stderr_text().contains("tp-password-0123456789"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_and_a_client_certificate_reach_their_upstreams() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = make_certs(dir.path()).await?;
    let tls = tls_mock(&certs, false).await?;
    let mtls = tls_mock(&certs, true).await?;
    let ca = s(certs.join("ca.pem"));
    let with = |name: &str, base: &str, ca_file: &str, client: bool| {
        let mut p = provider(name, "openai", base, &[("c", "sk-upstream-0123456789abcdef")]);
        p.ca_file = ca_file.into();
        if client {
            p.client_cert_file = s(certs.join("admin.pem"));
            p.client_key_file = s(certs.join("admin-key.pem"));
        }
        p
    };
    let snap = snapshot(
        1,
        vec![
            with("public-roots", &tls.openai_base(), "", false),
            with("private-ca", &tls.openai_base(), &ca, false),
            with("no-client-cert", &mtls.openai_base(), &ca, false),
            with("client-cert", &mtls.openai_base(), &ca, true),
        ],
        ["public-roots", "private-ca", "no-client-cert", "client-cert"]
            .into_iter()
            .map(|p| model(p, "", vec![backend(p, p, "mock-model", 1, 0)]))
            .collect(),
        vec![key("k", KEY, &[])],
    );
    let (w, _state) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();

    // Without the CA, the private upstream is not trusted: 502, a TLS error in the log.
    let (st, body) = chat(&c, &base, "public-roots").await?;
    assert_eq!(st, 502, "{body}");
    logged(&w, &["backend=public-roots", "TLS handshake with 127.0.0.1"]).await?;
    assert_eq!(tls.request_count(), 0);
    // With it, the same upstream answers.
    let (st, body) = chat(&c, &base, "private-ca").await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(tls.request_count(), 1);

    // An upstream that wants a client certificate: refused without one...
    let (st, body) = chat(&c, &base, "no-client-cert").await?;
    assert_eq!(st, 502, "{body}");
    logged(&w, &["backend=no-client-cert", "upstream attempt failed"]).await?;
    assert_eq!(mtls.request_count(), 0);
    // ...served with it.
    let (st, body) = chat(&c, &base, "client-cert").await?;
    assert_eq!(st, 200, "{body}");
    assert_eq!(mtls.request_count(), 1);

    // A missing CA file is a snapshot error naming the field: the worker keeps nothing
    // of it (here: it starts unconfigured).
    let mut bad = snap.clone();
    bad.providers[1].ca_file = "/nonexistent/ca.pem".into();
    let (w2, _state2) = start_with_snapshot(&bad, &[]).await?;
    logged(&w2, &["providers.private-ca.ca_file", "/nonexistent/ca.pem"]).await?;
    Ok(())
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                if b.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_sealed_state_the_logs_or_the_database() -> Result<()> {
    const CRED: &str = "sk-upstream-cred-7f3a9c0d1e2b";
    const PROXY_PW: &str = "proxy-pass-5d2e8b1c9a0f";
    const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let mock = MockServer::start(MockOptions::default()).await?;
    let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
    let mut control = spawn_control(&db, &[("SWITCHYARD_MASTER_KEY", MASTER_KEY)]).await?;
    let mut adm = admin(&control).await?;

    // Control checks the egress fields and names the one that is wrong.
    let mut p = control_common::provider("bad", &mock.openai_base());
    p.proxy = "https://proxy.internal:3128".into();
    assert_status(
        adm.create_provider(pb::CreateProviderRequest {
            provider: Some(p.clone()),
        })
        .await,
        tonic::Code::InvalidArgument,
        &["provider bad: proxy", "only http://"],
    );
    p.proxy = "http://u:inline@proxy.internal:3128".into();
    assert_status(
        adm.create_provider(pb::CreateProviderRequest {
            provider: Some(p.clone()),
        })
        .await,
        tonic::Code::InvalidArgument,
        &["proxy_password"],
    );
    p.proxy = String::new();
    p.client_cert_file = "/etc/switchyard/client.pem".into();
    assert_status(
        adm.create_provider(pb::CreateProviderRequest {
            provider: Some(p.clone()),
        })
        .await,
        tonic::Code::InvalidArgument,
        &["client_key_file"],
    );
    p.client_cert_file = String::new();
    p.ca_file = "relative/ca.pem".into();
    assert_status(
        adm.create_provider(pb::CreateProviderRequest { provider: Some(p) })
            .await,
        tonic::Code::InvalidArgument,
        &["ca_file"],
    );

    // A provider the traffic uses, and one behind a proxy with a password (never used:
    // its password is in the snapshot, the state file and the database all the same).
    adm.create_provider(pb::CreateProviderRequest {
        provider: Some(control_common::provider("p", &mock.openai_base())),
    })
    .await?;
    adm.create_credential(pb::CreateCredentialRequest {
        credential: Some(control_common::credential("p", "c", CRED)),
    })
    .await?;
    let mut q = control_common::provider("q", &mock.openai_base());
    q.proxy = "http://egress@127.0.0.1:9".into();
    q.proxy_password = PROXY_PW.into();
    adm.create_provider(pb::CreateProviderRequest { provider: Some(q) })
        .await?;
    adm.create_model(pb::CreateModelRequest {
        model: Some(control_common::model("m")),
    })
    .await?;
    adm.create_backend(pb::CreateBackendRequest {
        backend: Some(control_common::backend("m", "p")),
    })
    .await?;
    let created = adm
        .create_api_key(pb::CreateApiKeyRequest {
            name: "k".into(),
            import_plaintext: KEY.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(created.plaintext, KEY);

    // The proxy password is write-only: redacted in list, get and export.
    let listed = adm
        .list_providers(pb::ListProvidersRequest {})
        .await?
        .into_inner();
    let q = listed.providers.iter().find(|p| p.name == "q").unwrap();
    assert!(
        q.proxy_password.starts_with('…') && !q.proxy_password.contains(&PROXY_PW[..8]),
        "{q:?}"
    );
    let exported = adm.export(pb::ExportRequest::default()).await?.into_inner();
    assert!(!format!("{exported:?}").contains(PROXY_PW));
    assert!(!format!("{exported:?}").contains(CRED));

    // A worker with a state key: its snapshot file is sealed.
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let key_file = dir.path().join("state.key");
    std::fs::write(&key_file, "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\n")?;
    let wrong_key = dir.path().join("wrong.key");
    std::fs::write(&wrong_key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")?;
    let key_arg = key_file.display().to_string();
    let mut w = start_worker(
        &state,
        &control.url("grpc"),
        &["--worker-token", WORKER_TOKEN, "--state-key-file", &key_arg],
    )
    .await?;
    let c = client();
    let base = w.url("http");
    wait_for("the worker serves m", Duration::from_secs(15), || async {
        Ok((chat(&c, &base, "m").await?.0 == 200).then_some(()))
    })
    .await?;
    let file = state.join("snapshot.pb");
    wait_for("the state file", Duration::from_secs(10), || async {
        Ok(file.exists().then_some(()))
    })
    .await?;
    let sealed = std::fs::read(&file)?;
    assert!(sealed.starts_with(b"SYSTATE1"), "the state file is not sealed");
    let secrets = [CRED, PROXY_PW, KEY, ADMIN_TOKEN, WORKER_TOKEN, MASTER_KEY];
    for secret in secrets {
        let found = files_containing(&state, secret);
        assert!(found.is_empty(), "{secret} in the state dir: {found:?}");
    }
    w.terminate(Duration::from_secs(30)).await?;
    let mut logs = vec![w.stderr_text()];

    // Control goes away; the worker restarts from the sealed file.
    control.terminate(Duration::from_secs(30)).await?;
    logs.push(control.stderr_text());
    let w = start_worker(&state, "http://127.0.0.1:1", &["--state-key-file", &key_arg]).await?;
    let (st, body) = chat(&c, &w.url("http"), "m").await?;
    assert_eq!(st, 200, "{body}");
    logs.push(w.stderr_text());
    drop(w);

    // A key that does not open it: a clear error at start, no serving without its config.
    let wrong = wrong_key.display().to_string();
    let e = start_worker(&state, "http://127.0.0.1:1", &["--state-key-file", &wrong])
        .await
        .err()
        .context("a worker with the wrong state key started")?;
    assert!(
        format!("{e:#}").contains("the state key does not open it"),
        "{e:#}"
    );
    // And none at all: the same.
    let e = start_worker(&state, "http://127.0.0.1:1", &[])
        .await
        .err()
        .context("a worker without the state key started")?;
    assert!(format!("{e:#}").contains("no --state-key-file"), "{e:#}");

    // No secret in any log, nor in the database (secrets sealed under the master key,
    // the client key as a digest).
    for secret in secrets {
        for (i, log) in logs.iter().enumerate() {
            assert!(!log.contains(secret), "{secret} in log {i}");
        }
        let found = files_containing(db.dir.path(), secret);
        assert!(found.is_empty(), "{secret} in the database files: {found:?}");
    }
    Ok(())
}
