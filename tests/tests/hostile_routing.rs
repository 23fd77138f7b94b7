//! Issue 16, against the real worker binary: what a client with nothing but curl could do
//! to the operator's shared provider accounts, and may not. Paths outside the inference
//! endpoints, account-selecting headers, credentials taken out by client-provoked 401s,
//! slow answers mistaken for dead upstreams, internal detail in error bodies, and
//! `Retry-After` without a cap. Each test fails on the worker before these were closed.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use switchyard_mock::{Behavior, MockOptions, MockServer};
use switchyard_proto as pb;
use switchyard_tests::{
    wait_for,
    worker::{backend, key, model, provider, snapshot, start_with_snapshot},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "sk-sy-test-key-0123456789";

async fn mock() -> MockServer {
    MockServer::start(MockOptions {
        name: "up".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn one_model(m: &MockServer, creds: &[(&str, &str)]) -> pb::Snapshot {
    snapshot(
        1,
        vec![provider("oa", "openai", &m.openai_base(), creds)],
        vec![model("m", "round_robin", vec![backend("oa", "oa", "", 1, 0)])],
        vec![key("main", KEY, &[])],
    )
}

/// One request written by hand, so that the path reaches the worker exactly as written
/// (an HTTP client library would resolve its dot-segments first). Returns status and body.
async fn raw_post(addr: std::net::SocketAddr, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

async fn health(c: &reqwest::Client, base: &str) -> Result<Value> {
    Ok(c.get(format!("{base}/health")).send().await?.json().await?)
}

fn credential<'a>(h: &'a Value, name: &str) -> &'a Value {
    h["providers"][0]["credentials"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_inference_paths_reach_the_upstream() -> Result<()> {
    let m = mock().await;
    let (w, _d) = start_with_snapshot(&one_model(&m, &[("k1", "sk-one")]), &[]).await?;
    let addr = w.addr("http");
    let body = json!({"model":"m","messages":[]}).to_string();
    for path in [
        "/v1/../../admin",
        "/v1/chat/../files",
        "/v1/./chat/completions",
        "/v1//chat/completions",
        "/v1/chat%2fcompletions",
        "/v1/%2e%2e/x",
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/batches",
        "/v1/assistants",
        "/v1/organization/admin_api_keys",
    ] {
        let (status, text) = raw_post(addr, path, &body).await?;
        assert_eq!(status, 404, "{path}: {text}");
        let v: Value = serde_json::from_str(&text)?;
        assert_eq!(v["error"]["type"], "invalid_request_error", "{path}: {text}");
    }
    assert_eq!(
        m.request_count(),
        0,
        "nothing reached the upstream: {:?}",
        m.stats()
    );
    // The inference endpoints still do.
    let (status, text) = raw_post(addr, "/v1/chat/completions", &body).await?;
    assert_eq!(status, 200, "{text}");
    let (status, _) = raw_post(
        addr,
        "/v1/embeddings",
        &json!({"model":"m","input":"x"}).to_string(),
    )
    .await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_selecting_and_credential_headers_are_not_forwarded() -> Result<()> {
    let m = mock().await;
    let (w, _d) = start_with_snapshot(&one_model(&m, &[("k1", "sk-one")]), &[]).await?;
    let c = client();
    let r = c
        .post(format!("{}/v1/chat/completions", w.url("http")))
        .bearer_auth(KEY)
        .header("OpenAI-Organization", "org-someone-else")
        .header("OpenAI-Project", "proj-x")
        .header("api-key", "azure-key-of-the-client")
        .header("cookie", "session=abc")
        .header("x-keep", "yes")
        .header("x-secret-hop", "named in Connection")
        .header("connection", "keep-alive, x-secret-hop")
        .json(&json!({"model":"m","messages":[]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let seen = m.requests();
    assert_eq!(seen.len(), 1);
    let names: Vec<&str> = seen[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    for dropped in [
        "openai-organization",
        "openai-project",
        "api-key",
        "cookie",
        "x-secret-hop",
    ] {
        assert!(!names.contains(&dropped), "{dropped} was forwarded: {names:?}");
    }
    assert!(names.contains(&"x-keep"), "{names:?}");
    assert_eq!(seen[0].credential.as_deref(), Some("sk-one"));
    Ok(())
}

/// A 401 that the request provoked (here: the upstream reads an account from a client
/// header and rejects it) takes no credential out: the probe that would confirm it carries
/// nothing of the client's and passes. One request tries at most two credentials against
/// 401s and sends at most one probe; other tenants are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_provoked_401_takes_no_credential_out() -> Result<()> {
    let m = mock().await;
    m.set_default(Behavior {
        reject_header: Some("x-tenant-account".into()),
        ..Behavior::default()
    });
    let snap = one_model(&m, &[("k1", "sk-one"), ("k2", "sk-two"), ("k3", "sk-three")]);
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    for round in 0..3 {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-tenant-account", "acct-of-someone-else")
            .json(&json!({"model":"m","messages":[]}))
            .send()
            .await?;
        assert_eq!(r.status(), 502, "round {round}");
        let text = r.text().await?;
        assert!(text.contains("rejected the gateway's credential"), "{text}");
        assert!(!text.contains("oa") && !text.contains("k1"), "{text}");
    }
    let s = m.stats();
    assert_eq!(
        s.by_path.get("/v1/chat/completions"),
        Some(&6),
        "two credentials tried per request: {s:?}"
    );
    // The probes (one per credential at most, one at a time) pass: nothing is taken out.
    wait_for("the probes' verdicts", Duration::from_secs(10), || async {
        Ok(w.stderr_text()
            .contains("the probe did not confirm it")
            .then_some(()))
    })
    .await?;
    let probes = m.stats().by_path.get("/v1/models").copied().unwrap_or(0);
    assert!((1..=3).contains(&probes), "{probes} probes");
    // Other tenants are served by every credential.
    for _ in 0..6 {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model":"m","messages":[]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
    }
    let h = health(&c, &w.url("ops")).await?;
    for k in ["k1", "k2", "k3"] {
        assert_eq!(credential(&h, k)["available"], true, "{k}: {h}");
    }
    let s = m.stats();
    for cred in ["sk-one", "sk-two", "sk-three"] {
        assert!(
            s.by_credential.get(cred).copied().unwrap_or(0) >= 2,
            "{cred} in rotation: {s:?}"
        );
    }
    Ok(())
}

/// A long non-streaming generation that outlasts the per-try timeout is a slow request,
/// not a dead upstream: a probe (with the probe's own timeout) answers, so the breaker
/// does not count it. An upstream that does not answer the probe either is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_on_a_live_backend_do_not_eject_it() -> Result<()> {
    let m = mock().await;
    let mut snap = one_model(&m, &[("k1", "sk-one")]);
    snap.providers[0].request_timeout_ms = 300;
    let (w, _d) = start_with_snapshot(&snap, &["--eject-after", "2"]).await?;
    let base = w.url("http");
    let c = client();
    let body = json!({"model":"m","messages":[]});
    // Every answer takes 700 ms: each request times out at 300 ms; the probe answers.
    m.set_default(Behavior {
        latency_ms: 700,
        ..Behavior::default()
    });
    for round in 0..4 {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status(), 504, "round {round}");
        let text = r.text().await?;
        assert!(!text.contains("127.0.0.1"), "{text}");
        if round == 0 {
            wait_for("the probe's verdict", Duration::from_secs(10), || async {
                Ok(w.stderr_text().contains("slow, not dead").then_some(()))
            })
            .await?;
        }
    }
    let h = health(&c, &w.url("ops")).await?;
    let b = &h["models"]["m"]["backends"][0];
    assert_eq!(b["healthy"], true, "{h}");
    assert_eq!(b["consecutive_failures"], 0, "{h}");
    m.set_default(Behavior::default());
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?;
    assert_eq!(r.status(), 200, "still in rotation");
    Ok(())
}

/// Error bodies name no backend, provider or address; they carry the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_disclose_no_internal_detail() -> Result<()> {
    // A port with nothing listening: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let snap = snapshot(
        1,
        vec![provider(
            "secret-provider-name",
            "openai",
            &format!("http://{dead}/v1"),
            &[("k1", "sk-one")],
        )],
        vec![model(
            "m",
            "round_robin",
            vec![backend("secret-backend-name", "secret-provider-name", "", 1, 0)],
        )],
        vec![key("main", KEY, &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let c = client();
    let r = c
        .post(format!("{}/v1/chat/completions", w.url("http")))
        .bearer_auth(KEY)
        .header("x-request-id", "req-abc-123")
        .json(&json!({"model":"m","messages":[]}))
        .send()
        .await?;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(r.headers()["x-request-id"], "req-abc-123");
    let text = r.text().await?;
    for secret in [
        "secret-backend-name",
        "secret-provider-name",
        "127.0.0.1",
        &dead.port().to_string(),
    ] {
        assert!(!text.contains(secret), "{secret} disclosed: {text}");
    }
    assert!(
        text.contains("req-abc-123"),
        "the body names the request id: {text}"
    );
    Ok(())
}

/// A provider opens more paths with `allow_paths` and lets an account header through with
/// `forward_headers`; other providers of the same worker stay closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_opens_paths_and_headers_for_itself_only() -> Result<()> {
    let open = mock().await;
    let closed = mock().await;
    let mut p_open = provider("open", "openai", &open.openai_base(), &[("k1", "sk-open")]);
    p_open.allow_paths = vec!["/v1/files/*".into(), "/v1/batches".into()];
    p_open.forward_headers = vec!["openai-organization".into()];
    let p_closed = provider("closed", "openai", &closed.openai_base(), &[("k1", "sk-closed")]);
    let snap = snapshot(
        1,
        vec![p_open, p_closed],
        vec![
            model("m-open", "round_robin", vec![backend("open", "open", "", 1, 0)]),
            model(
                "m-closed",
                "round_robin",
                vec![backend("closed", "closed", "", 1, 0)],
            ),
        ],
        vec![key("main", KEY, &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let addr = w.addr("http");
    for (path, model, want) in [
        ("/v1/files", "m-open", 200),
        ("/v1/files/file-1/content", "m-open", 200),
        ("/v1/batches", "m-open", 200),
        ("/v1/batches/b-1", "m-open", 404),
        ("/v1/files/../fine_tuning/jobs", "m-open", 404),
        ("/v1/files", "m-closed", 404),
        ("/v1/fine_tuning/jobs", "m-open", 404),
    ] {
        let (status, text) = raw_post(addr, path, &json!({"model": model}).to_string()).await?;
        assert_eq!(status, want, "{path} {model}: {text}");
    }
    assert_eq!(closed.request_count(), 0);
    assert_eq!(
        open.stats().by_path.keys().cloned().collect::<Vec<_>>(),
        ["/v1/batches", "/v1/files", "/v1/files/file-1/content"]
    );
    // The header the provider allows goes through; the other account header does not.
    let c = client();
    for (m, mock) in [("m-open", &open), ("m-closed", &closed)] {
        let r = c
            .post(format!("{}/v1/chat/completions", w.url("http")))
            .bearer_auth(KEY)
            .header("openai-organization", "org-1")
            .header("openai-project", "proj-1")
            .json(&json!({"model": m, "messages": []}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let seen = mock.requests();
        let last = seen.last().unwrap();
        assert_eq!(
            last.header("openai-organization"),
            (m == "m-open").then_some("org-1"),
            "{m}"
        );
        assert_eq!(last.header("openai-project"), None, "{m}");
    }
    Ok(())
}

/// `x-switchyard-backend` pins only for a key granted `allow_pin`; any other key's header
/// is ignored (it would skip tiers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_is_a_permission_of_the_key() -> Result<()> {
    let a = mock().await;
    let b = mock().await;
    const PINNER: &str = "sk-sy-pinner-key-0123456789";
    let mut pinner = key("pinner", PINNER, &[]);
    pinner.allow_pin = true;
    let snap = snapshot(
        1,
        vec![
            provider("pa", "openai", &a.openai_base(), &[("k", "sk-a")]),
            provider("pb", "openai", &b.openai_base(), &[("k", "sk-b")]),
        ],
        // `a` is tier 0; `b` is tier 1 and only serves when `a` is down.
        vec![model(
            "m",
            "round_robin",
            vec![backend("a", "pa", "", 1, 0), backend("b", "pb", "", 1, 1)],
        )],
        vec![key("main", KEY, &[]), pinner],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let c = client();
    for (k, want) in [(KEY, "a"), (PINNER, "b")] {
        for _ in 0..3 {
            let r = c
                .post(format!("{}/v1/chat/completions", w.url("http")))
                .bearer_auth(k)
                .header("x-switchyard-backend", "b")
                .json(&json!({"model": "m", "messages": []}))
                .send()
                .await?;
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-switchyard-backend"], want, "key {k}");
        }
    }
    Ok(())
}
