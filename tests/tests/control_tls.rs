//! The control channel on a real network: TLS and mTLS on the gRPC API (certificates
//! from `switchyard certs init`), a worker named by its client certificate, a wrong CA
//! or a missing client certificate refused, the server certificate rotated on disk
//! without a restart, and plaintext to a non-loopback peer refused unless `--insecure`.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use control_common::{credential, provider, ADMIN_TOKEN, WORKER_TOKEN};
use futures::SinkExt;
use serde_json::json;
use switchyard_mock::{MockOptions, MockServer};
use switchyard_proto::{
    channel::{endpoint, ClientTls},
    v1::{self as pb, admin_client::AdminClient, worker_api_client::WorkerApiClient},
};
use switchyard_tests::{bin_path, wait_for, worker::start_worker, DbKind, Proc, TestDb};

const KEY: &str = "sk-sy-tls-e2e-key-0123456789abcdef";
const UPSTREAM_SECRET: &str = "sk-upstream-secret-tls-4c1f9b";

/// `switchyard certs init DIR --worker w1` (also checks the key files' modes).
async fn certs_init(dir: &Path) -> Result<()> {
    let out = tokio::process::Command::new(bin_path("switchyard"))
        .args(["certs", "init"])
        .arg(dir)
        .args(["--worker", "w1"])
        .output()
        .await?;
    if !out.status.success() {
        bail!("certs init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("--tls-client-ca") && said.contains("--client-cert"),
        "{said}"
    );
    #[cfg(unix)]
    for f in ["ca-key.pem", "control-key.pem", "admin-key.pem", "w1-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(f))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // A second run never overwrites.
    let again = tokio::process::Command::new(bin_path("switchyard"))
        .args(["certs", "init"])
        .arg(dir)
        .output()
        .await?;
    assert!(!again.status.success());
    Ok(())
}

async fn spawn_control(db: &TestDb, args: &[&str]) -> Result<Proc> {
    let mut cmd = tokio::process::Command::new(bin_path("switchyard-control"));
    cmd.args(["--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(db.dir.path().join("data"))
        .args(["--database-url", &db.url])
        .args(args)
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("SWITCHYARD_WORKER_TOKEN")
        .env_remove("SWITCHYARD_MASTER_KEY")
        .env("RUST_LOG", "info,sqlx=warn");
    Proc::spawn("control", cmd).await
}

fn mtls_args(d: &Path) -> Vec<String> {
    vec![
        "--grpc-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        d.join("control.pem").display().to_string(),
        "--tls-key".into(),
        d.join("control-key.pem").display().to_string(),
        "--tls-client-ca".into(),
        d.join("ca.pem").display().to_string(),
    ]
}

fn tls(ca: &Path, cert: Option<(&Path, &str)>) -> ClientTls {
    ClientTls {
        ca: Some(ca.join("ca.pem")),
        cert: cert.map(|(d, n)| d.join(format!("{n}.pem"))),
        key: cert.map(|(d, n)| d.join(format!("{n}-key.pem"))),
    }
}

fn https(p: &Proc) -> String {
    format!("https://localhost:{}", p.addr("grpc").port())
}

type Admin = AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, control_common::Bearer>,
>;

async fn admin(url: &str, t: &ClientTls) -> Result<Admin> {
    let ch = endpoint(url, t)?.connect().await?;
    Ok(AdminClient::with_interceptor(
        ch,
        control_common::Bearer(Some(ADMIN_TOKEN.into())),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_worker_is_named_by_its_certificate_and_others_are_refused() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let (a, b) = (certs.path().join("a"), certs.path().join("b"));
    certs_init(&a).await?;
    certs_init(&b).await?;
    let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
    let control = spawn_control(&db, &mtls_args(&a).iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let url = https(&control);

    let mock = MockServer::start(MockOptions::default()).await?;
    let mut adm = admin(&url, &tls(&a, Some((&a, "admin")))).await?;
    let st = adm.get_status(pb::GetStatusRequest {}).await?.into_inner();
    assert_eq!((st.transport.as_str(), st.insecure), ("mtls", false));
    let mut p = provider("p", &mock.openai_base());
    p.health = Some(pb::HealthCheck {
        enabled: Some(false),
        ..Default::default()
    });
    adm.create_provider(pb::CreateProviderRequest { provider: Some(p) })
        .await?;
    adm.create_credential(pb::CreateCredentialRequest {
        credential: Some(credential("p", "k1", UPSTREAM_SECRET)),
    })
    .await?;
    adm.create_model(pb::CreateModelRequest {
        model: Some(control_common::model("m")),
    })
    .await?;
    adm.create_backend(pb::CreateBackendRequest {
        backend: Some(control_common::backend("m", "p")),
    })
    .await?;
    adm.create_api_key(pb::CreateApiKeyRequest {
        name: "tls".into(),
        import_plaintext: KEY.into(),
        ..Default::default()
    })
    .await?;

    // A worker with its certificate and no token gets the config, under the certificate's name.
    let state = tempfile::tempdir()?;
    let s = |p: std::path::PathBuf| p.display().to_string();
    let worker = start_worker(
        state.path(),
        &url,
        &[
            "--worker-id",
            "claims-to-be-someone-else",
            "--control-ca",
            &s(a.join("ca.pem")),
            "--client-cert",
            &s(a.join("w1.pem")),
            "--client-key",
            &s(a.join("w1-key.pem")),
        ],
    )
    .await?;
    let c = reqwest::Client::new();
    let base = worker.url("http");
    wait_for("the mTLS worker serves", Duration::from_secs(20), || async {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model":"m","messages":[{"role":"user","content":"hi"}]}))
            .send()
            .await?;
        Ok((r.status() == 200).then_some(()))
    })
    .await?;
    let ids = wait_for("control lists w1", Duration::from_secs(10), || {
        let mut adm = adm.clone();
        async move {
            let ws = adm
                .list_workers(pb::ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            let ids: Vec<String> = ws.into_iter().map(|w| w.worker_id).collect();
            Ok(ids.iter().any(|i| i == "w1").then_some(ids))
        }
    })
    .await?;
    assert_eq!(ids, ["w1"], "the Hello's worker id is not trusted under mTLS");

    // A worker that trusts another CA does not connect; nor does one without a certificate.
    let wrong_ca = start_worker(
        tempfile::tempdir()?.path(),
        &url,
        &[
            "--worker-id",
            "wrong-ca",
            "--control-ca",
            &s(b.join("ca.pem")),
            "--client-cert",
            &s(a.join("w1.pem")),
            "--client-key",
            &s(a.join("w1-key.pem")),
        ],
    )
    .await?;
    let no_cert = start_worker(
        tempfile::tempdir()?.path(),
        &url,
        &[
            "--worker-id",
            "no-cert",
            "--control-ca",
            &s(a.join("ca.pem")),
            "--worker-token",
            WORKER_TOKEN,
        ],
    )
    .await?;
    // A certificate from another CA is refused by control too.
    let foreign = start_worker(
        tempfile::tempdir()?.path(),
        &url,
        &[
            "--control-ca",
            &s(a.join("ca.pem")),
            "--client-cert",
            &s(b.join("w1.pem")),
            "--client-key",
            &s(b.join("w1-key.pem")),
        ],
    )
    .await?;
    for w in [&wrong_ca, &no_cert, &foreign] {
        wait_for(
            "the worker reports control unreachable",
            Duration::from_secs(20),
            || async { Ok(w.stderr_text().contains("control unreachable").then_some(())) },
        )
        .await
        .with_context(|| w.stderr_text())?;
    }
    assert!(
        wrong_ca.stderr_text().to_lowercase().contains("certificate"),
        "{}",
        wrong_ca.stderr_text()
    );
    wait_for(
        "control logs the refused handshakes",
        Duration::from_secs(10),
        || async {
            let log = control.stderr_text();
            Ok((log.contains("peer sent no certificates")
                && log.matches("TLS handshake refused").count() >= 3)
                .then_some(()))
        },
    )
    .await
    .with_context(|| control.stderr_text())?;
    let ws = adm
        .list_workers(pb::ListWorkersRequest {})
        .await?
        .into_inner()
        .workers;
    assert_eq!(ws.len(), 1, "{ws:?}");

    // No secret in any log.
    for (name, log) in [
        ("control", control.stderr_text()),
        ("worker", worker.stderr_text()),
    ] {
        for secret in [UPSTREAM_SECRET, KEY, ADMIN_TOKEN] {
            assert!(!log.contains(secret), "{name} logged a secret");
        }
    }
    for f in ["admin-key.pem", "w1-key.pem", "control-key.pem"] {
        let key = std::fs::read_to_string(a.join(f))?;
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!control.stderr_text().contains(&body[..40]), "control logged {f}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_is_served_without_restart() -> Result<()> {
    let certs = tempfile::tempdir()?;
    let (a, b) = (certs.path().join("a"), certs.path().join("b"));
    certs_init(&a).await?;
    certs_init(&b).await?;
    // Control serves copies of a's certificate, so that the test can replace them.
    let live = certs.path().join("live");
    std::fs::create_dir(&live)?;
    for f in ["control.pem", "control-key.pem", "ca.pem"] {
        std::fs::copy(a.join(f), live.join(f))?;
    }
    let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
    let control = spawn_control(
        &db,
        &mtls_args(&live).iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;
    let url = https(&control);
    let trusts_a = tls(&a, Some((&a, "admin")));
    let trusts_b = tls(&b, Some((&a, "admin")));
    admin(&url, &trusts_a)
        .await?
        .get_status(pb::GetStatusRequest {})
        .await?;
    assert!(
        admin(&url, &trusts_b).await.is_err(),
        "b's CA must not accept a's certificate"
    );

    // Rotate: new key first, then the certificate, each by rename (as cert-manager or
    // certbot's deploy hooks do); a half-rotated pair is never served.
    for f in ["control-key.pem", "control.pem"] {
        let tmp = live.join(format!(".{f}.new"));
        std::fs::copy(b.join(f), &tmp)?;
        std::fs::rename(&tmp, live.join(f))?;
    }
    wait_for(
        "control serves the new certificate",
        Duration::from_secs(10),
        || async {
            Ok(match admin(&url, &trusts_b).await {
                Ok(mut c) => c.get_status(pb::GetStatusRequest {}).await.ok().map(|_| ()),
                Err(_) => None,
            })
        },
    )
    .await?;
    assert!(
        admin(&url, &trusts_a).await.is_err(),
        "the old certificate is no longer served"
    );
    assert!(control.stderr_text().contains("TLS certificate reloaded"));
    Ok(())
}

/// This machine's first non-loopback IPv4 address (`ip -4 -o addr`).
fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet")?;
            it.next()?.split('/').next()?.parse::<std::net::Ipv4Addr>().ok()
        })
        .find(|ip| !ip.is_loopback())
}

async fn watch_from(url: &str) -> Result<(), tonic::Status> {
    let ch = endpoint(url, &ClientTls::default())
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut w = WorkerApiClient::with_interceptor(ch, control_common::Bearer(Some(WORKER_TOKEN.into())));
    let (mut tx, rx) = futures::channel::mpsc::channel(4);
    tx.send(control_common::hello("plain", 0)).await.unwrap();
    // Accepted: control answered the Hello with the stream's headers (its gate refuses
    // before that).
    w.watch(rx).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_non_loopback_worker_is_refused_unless_insecure() -> Result<()> {
    // A real non-loopback peer: connect to this machine's own interface address, which
    // the kernel routes locally but which is not 127/8, so control sees that peer address.
    let Some(ip) = non_loopback_ipv4() else {
        if std::env::var_os("CI").is_some() {
            bail!("CI is set but this machine has no non-loopback IPv4 address");
        }
        eprintln!("SKIPPED: no non-loopback IPv4 address (ip -4 -o addr)");
        return Ok(());
    };
    let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
    let strict = spawn_control(
        &db,
        &["--grpc-listen", "0.0.0.0:0", "--worker-token", WORKER_TOKEN],
    )
    .await?;
    let port = strict.addr("grpc").port();
    let e = watch_from(&format!("http://{ip}:{port}")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("--insecure"), "{}", e.message());
    watch_from(&format!("http://127.0.0.1:{port}")).await?;
    let st = AdminClient::with_interceptor(
        endpoint(&format!("http://127.0.0.1:{port}"), &ClientTls::default())?
            .connect()
            .await?,
        control_common::Bearer(Some(ADMIN_TOKEN.into())),
    )
    .get_status(pb::GetStatusRequest {})
    .await?
    .into_inner();
    assert_eq!((st.transport.as_str(), st.insecure), ("plaintext", false));
    drop(strict);

    let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
    let lax = spawn_control(
        &db,
        &[
            "--grpc-listen",
            "0.0.0.0:0",
            "--worker-token",
            WORKER_TOKEN,
            "--insecure",
        ],
    )
    .await?;
    wait_for(
        "a warning about --insecure at start",
        Duration::from_secs(10),
        || async {
            Ok(lax
                .stderr_text()
                .contains("WARN")
                .then_some(())
                .filter(|()| lax.stderr_text().contains("--insecure")))
        },
    )
    .await?;
    let port = lax.addr("grpc").port();
    watch_from(&format!("http://{ip}:{port}")).await?;
    let out = tokio::process::Command::new(bin_path("switchyard"))
        .args([
            "status",
            "--control",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            ADMIN_TOKEN,
        ])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("plaintext (--insecure"), "{text}");
    Ok(())
}
