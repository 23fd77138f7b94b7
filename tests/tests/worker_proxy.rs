//! Worker end to end: the real `switchyard-worker` binary serving a snapshot from its
//! state dir (control unreachable), in front of in-process `switchyard-mock` upstreams.
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use serde_json::{json, Value};
use switchyard_mock::{Behavior, Fault, MockOptions, MockServer};
use switchyard_proto as pb;
use switchyard_tests::{
    wait_for,
    worker::{backend, key, model, provider, snapshot, start_with_snapshot},
};

const KEY: &str = "sk-sy-test-key-0123456789";
const LIMITED: &str = "sk-sy-limited-key-0123456789";

async fn mock(name: &str) -> MockServer {
    MockServer::start(MockOptions {
        name: name.into(),
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

fn keys() -> Vec<pb::ApiKey> {
    // The main key may pin a backend (`x-switchyard-backend`); pinning is off by default.
    let mut main = key("main", KEY, &[]);
    main.allow_pin = true;
    vec![main, key("limited", LIMITED, &["other"])]
}

async fn chat(c: &reqwest::Client, base: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut rb = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

fn hdr(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_plain_and_stream_rewrite_model_only() -> Result<()> {
    let m = mock("up").await;
    let snap = snapshot(
        1,
        vec![provider(
            "oa",
            "openai",
            &m.openai_base(),
            &[("k1", "sk-upstream-1")],
        )],
        vec![model(
            "gpt-x",
            "round_robin",
            vec![backend("oa-b", "oa", "real-x", 1, 0)],
        )],
        keys(),
    );
    let (w, _dir) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    // Deliberately odd formatting: every byte except the model value must pass unchanged.
    let raw = r#"{ "messages": [{"role":"user","content":"hi \"model\": no"}],  "model" : "gpt-x", "temperature":0.5 }"#;
    let r = c
        .post(format!("{base}/v1/chat/completions?foo=bar&x=1"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header("x-request-id", "req-123")
        .header("openai-organization", "org-1")
        .body(raw)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-switchyard-backend"), "oa-b");
    assert_eq!(hdr(&r, "x-switchyard-provider"), "oa");
    assert_eq!(hdr(&r, "x-request-id"), "req-123");
    assert_eq!(hdr(&r, "x-switchyard-retries"), "0");
    assert_eq!(hdr(&r, "x-mock-name"), "up");
    let v: Value = r.json().await?;
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    let seen = m.requests();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/v1/chat/completions");
    assert_eq!(s.query.as_deref(), Some("foo=bar&x=1"));
    assert_eq!(
        String::from_utf8_lossy(&s.body),
        raw.replace(r#""gpt-x""#, r#""real-x""#)
    );
    assert_eq!(s.credential.as_deref(), Some("sk-upstream-1"));
    // Account-selecting headers are the operator's to allow (`forward_headers`).
    assert_eq!(s.header("openai-organization"), None);
    assert!(
        s.headers.iter().all(|(_, v)| !v.contains(KEY)),
        "client key leaked upstream: {:?}",
        s.headers
    );

    // Streaming: relayed as SSE, ends with [DONE].
    let r = chat(
        &c,
        &base,
        &json!({"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"x"}]}),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(hdr(&r, "content-type").starts_with("text/event-stream"));
    assert!(!hdr(&r, "x-request-id").is_empty());
    let text = r.text().await?;
    assert!(text.matches("data: ").count() >= 3, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let last = m.requests().pop().unwrap();
    assert_eq!(last.model.as_deref(), Some("real-x"));
    assert!(last.stream);

    // GET /v1/models lists what the key may use.
    let v: Value = c
        .get(format!("{base}/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["data"][0]["id"], "gpt-x");
    let v: Value = c
        .get(format!("{base}/v1/models"))
        .bearer_auth(LIMITED)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_pass_through_headers_and_query() -> Result<()> {
    let m = mock("anth").await;
    let snap = snapshot(
        1,
        vec![provider(
            "an",
            "anthropic",
            &m.url(),
            &[("k1", "sk-ant-upstream")],
        )],
        vec![model(
            "claude-x",
            "round_robin",
            vec![backend("an", "an", "claude-real", 1, 0)],
        )],
        keys(),
    );
    let (w, _dir) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    for stream in [false, true] {
        let body = json!({"model":"claude-x","max_tokens":10,"stream":stream,"messages":[{"role":"user","content":"hi"}]});
        let r = c
            .post(format!("{base}/v1/messages?beta=true"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "a-2025-01-01,b-2025-02-02")
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        assert_eq!(hdr(&r, "x-switchyard-backend"), "an");
        let text = r.text().await?;
        if stream {
            assert!(text.contains("event: message_start"), "{text}");
            assert!(text.contains("event: message_stop"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text)?;
            assert_eq!(v["type"], "message");
        }
        let s = m.requests().pop().unwrap();
        assert_eq!(s.path, "/v1/messages");
        assert_eq!(s.query.as_deref(), Some("beta=true"));
        assert_eq!(s.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(s.header("anthropic-beta"), Some("a-2025-01-01,b-2025-02-02"));
        assert_eq!(s.header("x-api-key"), Some("sk-ant-upstream"));
        assert_eq!(s.header("authorization"), None);
        assert_eq!(s.model.as_deref(), Some("claude-real"));
    }
    // count_tokens routes too.
    let r = c
        .post(format!("{base}/v1/messages/count_tokens"))
        .header("x-api-key", KEY)
        .json(&json!({"model":"claude-x","messages":[{"role":"user","content":"hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(m.requests().pop().unwrap().path, "/v1/messages/count_tokens");
    Ok(())
}

fn assert_openai_error(v: &Value, ty: &str) {
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(v["error"]["type"], ty, "{v}");
    assert!(v["error"].get("code").is_some(), "{v}");
}

fn assert_anthropic_error(v: &Value, ty: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], ty, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_both_dialects() -> Result<()> {
    let m = mock("up").await;
    let snap = snapshot(
        1,
        vec![
            provider("oa", "openai", &m.openai_base(), &[("k1", "s1")]),
            provider("an", "anthropic", &m.url(), &[("k1", "s1")]),
        ],
        vec![
            model("gpt-x", "round_robin", vec![backend("oa", "oa", "", 1, 0)]),
            model("claude-x", "round_robin", vec![backend("an", "an", "", 1, 0)]),
        ],
        keys(),
    );
    let (w, _dir) = start_with_snapshot(&snap, &["--max-body-bytes", "2000"]).await?;
    let base = w.url("http");
    let c = client();
    let oa = format!("{base}/v1/chat/completions");
    let an = format!("{base}/v1/messages");
    let good = json!({"model":"gpt-x","messages":[]}).to_string();
    // (url, key, body, status, openai type, anthropic type)
    type Case<'a> = (&'a String, Option<&'a str>, String, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        // (url, key, body, status, openai type, anthropic type)
        (&oa, None, good.clone(), 401, "authentication_error", ""),
        (
            &oa,
            Some("sk-wrong-key-xxxxxxxxxxxx"),
            good.clone(),
            401,
            "authentication_error",
            "",
        ),
        // A model the key may not use answers like one that does not exist.
        (&oa, Some(LIMITED), good.clone(), 404, "invalid_request_error", ""),
        (
            &oa,
            Some(KEY),
            json!({"model":"nope","messages":[]}).to_string(),
            404,
            "invalid_request_error",
            "",
        ),
        (
            &oa,
            Some(KEY),
            "{not json".into(),
            400,
            "invalid_request_error",
            "",
        ),
        (
            &oa,
            Some(KEY),
            json!({"messages":[]}).to_string(),
            400,
            "invalid_request_error",
            "",
        ),
        (
            &oa,
            Some(KEY),
            json!({"model":"gpt-x","pad":"x".repeat(3000)}).to_string(),
            413,
            "invalid_request_error",
            "",
        ),
        (
            &an,
            None,
            json!({"model":"claude-x"}).to_string(),
            401,
            "",
            "authentication_error",
        ),
        (
            &an,
            Some(LIMITED),
            json!({"model":"claude-x"}).to_string(),
            404,
            "",
            "not_found_error",
        ),
        (
            &an,
            Some(KEY),
            json!({"model":"nope"}).to_string(),
            404,
            "",
            "not_found_error",
        ),
        (&an, Some(KEY), "[1,2]".into(), 400, "", "invalid_request_error"),
        (
            &an,
            Some(KEY),
            json!({"model":"claude-x","pad":"x".repeat(3000)}).to_string(),
            413,
            "",
            "request_too_large",
        ),
        // An OpenAI-only model is reached from the Anthropic route by translation: a body
        // without `messages` does not translate, a 400 before any upstream request.
        (
            &an,
            Some(KEY),
            json!({"model":"gpt-x"}).to_string(),
            400,
            "",
            "invalid_request_error",
        ),
    ];
    for (url, k, body, status, oty, aty) in cases {
        let mut rb = c
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(k) = k {
            rb = if url.ends_with("messages") {
                rb.header("x-api-key", k)
            } else {
                rb.bearer_auth(k)
            };
        }
        let r = rb.send().await?;
        assert_eq!(r.status().as_u16(), status, "{url} {body:.80}");
        assert!(!hdr(&r, "x-request-id").is_empty());
        let v: Value = r.json().await?;
        if oty.is_empty() {
            assert_anthropic_error(&v, aty);
        } else {
            assert_openai_error(&v, oty);
        }
    }
    assert_eq!(m.request_count(), 0, "no rejected request reaches the upstream");

    // Upstream client errors pass through unchanged.
    m.push(Behavior::error(422));
    let r = chat(&c, &base, &json!({"model":"gpt-x","messages":[]}), &[]).await;
    assert_eq!(r.status(), 422);
    assert_eq!(hdr(&r, "x-mock-name"), "up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_means_not_ready_and_503() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = switchyard_tests::worker::start_worker(dir.path(), "http://127.0.0.1:1", &[]).await?;
    let base = w.url("http");
    let c = client();
    assert_eq!(c.get(format!("{base}/ready")).send().await?.status(), 503);
    let r = chat(&c, &base, &json!({"model":"x"}), &[]).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await?;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no configuration yet"),
        "{v}"
    );
    let r = c
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", KEY)
        .json(&json!({"model":"x"}))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert_anthropic_error(&r.json().await?, "overloaded_error");
    let h: Value = c.get(format!("{base}/health")).send().await?.json().await?;
    assert_eq!(h["status"], "unavailable");
    Ok(())
}

/// Three mocks named a, b, c, one provider each, one model over them.
async fn three(strategy: &str, weights: [u32; 3], prios: [i32; 3]) -> (Vec<MockServer>, pb::Snapshot) {
    let mut mocks = Vec::new();
    let mut provs = Vec::new();
    let mut backs = Vec::new();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let m = mock(n).await;
        provs.push(provider(n, "openai", &m.openai_base(), &[("k", "s")]));
        backs.push(backend(n, n, "up", weights[i], prios[i]));
        mocks.push(m);
    }
    let mut md = model("m", strategy, backs);
    md.retry = Some(pb::RetryPolicy {
        max_retries: Some(2),
        per_try_timeout_ms: 0,
    });
    (mocks, snapshot(1, provs, vec![md], keys()))
}

async fn distribution(base: &str, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let c = client();
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = chat(&c, base, &json!({"model":"m","messages":[]}), headers).await;
        assert_eq!(r.status(), 200);
        *out.entry(hdr(&r, "x-switchyard-backend")).or_default() += 1;
        let _ = r.bytes().await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_tiers_and_pinning() -> Result<()> {
    // round robin: exactly even.
    let (_m, snap) = three("round_robin", [1, 1, 1], [0, 0, 0]).await;
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let d = distribution(&w.url("http"), 300, &[]).await;
    assert_eq!((d["a"], d["b"], d["c"]), (100, 100, 100), "{d:?}");
    // pinning
    let d = distribution(&w.url("http"), 20, &[("x-switchyard-backend", "c")]).await;
    assert_eq!(d.get("c"), Some(&20), "{d:?}");
    drop(w);

    // weighted round robin 3:1:0-tier... a:3 b:1, c in tier 1 (unused while a/b are up).
    let (_m, snap) = three("weighted_round_robin", [3, 1, 1], [0, 0, 1]).await;
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let d = distribution(&w.url("http"), 400, &[]).await;
    assert_eq!(
        (d["a"], d["b"], d.get("c").copied().unwrap_or(0)),
        (300, 100, 0),
        "{d:?}"
    );
    drop(w);

    // weighted random 3:1 within ±5% (of the total) over 1000.
    let (_m, snap) = three("weighted_random", [3, 1, 1], [0, 0, 1]).await;
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let d = distribution(&w.url("http"), 1000, &[]).await;
    let a = d["a"] as f64 / 1000.0;
    assert!((a - 0.75).abs() < 0.05, "{d:?}");
    drop(w);

    // failover: all on priority 0 until it dies, then tier 1.
    let (mocks, snap) = three("failover", [1, 1, 1], [0, 1, 2]).await;
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let d = distribution(&w.url("http"), 50, &[]).await;
    assert_eq!(d.get("a"), Some(&50), "{d:?}");
    mocks[0].set_default(Behavior::error(503));
    let d = distribution(&w.url("http"), 50, &[]).await;
    assert_eq!(d.get("b"), Some(&50), "{d:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_dies_under_load_no_request_fails() -> Result<()> {
    let (mocks, snap) = three("round_robin", [1, 1, 1], [0, 0, 0]).await;
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..60 {
                let r = chat(&c, &base, &json!({"model":"m","messages":[],"t":t}), &[]).await;
                codes.push(r.status().as_u16());
                let _ = r.bytes().await;
            }
            codes
        }));
    }
    // Kill b (connections dropped) while the load runs.
    wait_for("some traffic", Duration::from_secs(10), || async {
        Ok((mocks[1].request_count() > 20).then_some(()))
    })
    .await?;
    mocks[1].set_default(Behavior::fault(Fault::Drop));
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    assert!(
        all.iter().all(|&s| s == 200),
        "failed: {:?}",
        all.iter().filter(|&&s| s != 200).collect::<Vec<_>>()
    );
    let h: Value = c.get(format!("{base}/health")).send().await?.json().await?;
    assert_eq!(h["status"], "degraded", "{h}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_gives_503_in_dialect_and_hang_gives_504() -> Result<()> {
    let (mocks, snap) = three("round_robin", [1, 1, 1], [0, 0, 0]).await;
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    for m in &mocks {
        m.set_default(Behavior::fault(Fault::Drop));
    }
    let mut last = 0;
    for _ in 0..10 {
        let r = chat(&c, &base, &json!({"model":"m","messages":[]}), &[]).await;
        last = r.status().as_u16();
        assert!(last == 502 || last == 503, "{last}");
        let v: Value = r.json().await?;
        assert!(v["error"]["message"].is_string(), "{v}");
        if last == 503 {
            break;
        }
    }
    assert_eq!(last, 503, "all backends ejected → 503 no healthy backend");
    drop(w);

    // Hang → 504 within the per-try timeout.
    let m = mock("hang").await;
    m.set_default(Behavior::fault(Fault::Hang));
    let mut p = provider("h", "openai", &m.openai_base(), &[("k", "s")]);
    p.request_timeout_ms = 400;
    let mut md = model("m", "round_robin", vec![backend("h", "h", "", 1, 0)]);
    md.retry = Some(pb::RetryPolicy {
        max_retries: Some(0),
        per_try_timeout_ms: 0,
    });
    let (w, _d) = start_with_snapshot(&snapshot(1, vec![p], vec![md], keys()), &[]).await?;
    let t0 = std::time::Instant::now();
    let r = chat(&c, &w.url("http"), &json!({"model":"m","messages":[]}), &[]).await;
    assert_eq!(r.status(), 504);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_openai_error(&r.json().await?, "upstream_error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cut_after_first_byte_ends_with_error_event_and_no_retry() -> Result<()> {
    let m = mock("cut").await;
    m.set_default(Behavior {
        fault: Fault::CutStream { after_chunks: 2 },
        ..Behavior::default()
    });
    let snap = snapshot(
        1,
        vec![
            provider("oa", "openai", &m.openai_base(), &[("k", "s")]),
            provider("an", "anthropic", &m.url(), &[("k", "s")]),
        ],
        vec![
            model("m", "round_robin", vec![backend("oa", "oa", "", 1, 0)]),
            model("c", "round_robin", vec![backend("an", "an", "", 1, 0)]),
        ],
        keys(),
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    let r = chat(&c, &base, &json!({"model":"m","stream":true,"messages":[]}), &[]).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await?;
    assert!(text.contains("\"choices\""), "{text}");
    assert!(text.trim_end().ends_with("}"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("data: {\"error\""), "{text}");
    assert_eq!(m.request_count(), 1, "not retried");

    let r = c
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", KEY)
        .json(&json!({"model":"c","stream":true,"max_tokens":5,"messages":[]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let text = r.text().await?;
    assert!(text.contains("event: message_start"), "{text}");
    assert!(text.contains("event: error\ndata: {\"type\":\"error\""), "{text}");
    assert_eq!(m.request_count(), 2, "not retried");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_401_ejects_429_cools_down() -> Result<()> {
    let m = mock("up").await;
    let snap = snapshot(
        1,
        vec![provider(
            "oa",
            "openai",
            &m.openai_base(),
            &[("k1", "sk-one"), ("k2", "sk-two"), ("k3", "sk-bad")],
        )],
        vec![model("m", "round_robin", vec![backend("oa", "oa", "", 1, 0)])],
        keys(),
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    m.set_default(Behavior {
        reject_credentials: vec!["sk-bad".into()],
        ..Behavior::default()
    });
    // The first 401 sends one confirmation probe (GET /models with that credential,
    // nothing of the client's); the probe's 401 ejects it.
    for _ in 0..3 {
        let r = chat(&c, &base, &json!({"model":"m","messages":[]}), &[]).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    wait_for(
        "k3 ejected after a confirming probe",
        Duration::from_secs(10),
        || {
            let (c, base) = (c.clone(), w.url("ops"));
            async move {
                let h: Value = c.get(format!("{base}/health")).send().await?.json().await?;
                let out = h["providers"][0]["credentials"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["name"] == "k3"))
                    .filter(|k3| k3["available"] == false)
                    .map(|_| ());
                Ok(out)
            }
        },
    )
    .await?;
    let before = m.stats().by_credential.get("sk-bad").copied().unwrap_or(0);
    assert!(before <= 4, "one probe, and at most the 3 requests: {before}");
    for _ in 0..30 {
        let r = chat(&c, &base, &json!({"model":"m","messages":[]}), &[]).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    let s = m.stats();
    assert_eq!(
        s.by_credential.get("sk-bad").copied().unwrap_or(0),
        before,
        "ejected once its 401 was confirmed: {s:?}"
    );
    let (one, two) = (s.by_credential["sk-one"], s.by_credential["sk-two"]);
    assert!(one >= 10 && two >= 10, "rotation: {s:?}");

    // 429 with Retry-After cools that credential down; the request succeeds on the other.
    m.reset();
    m.push(Behavior::rate_limited(60));
    let r = chat(&c, &base, &json!({"model":"m","messages":[]}), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-switchyard-retries"), "1");
    let cooled = m.requests()[0].credential.clone().unwrap();
    for _ in 0..10 {
        let r = chat(&c, &base, &json!({"model":"m","messages":[]}), &[]).await;
        assert_eq!(r.status(), 200);
    }
    let s = m.stats();
    assert_eq!(
        s.by_credential.get(&cooled),
        Some(&1),
        "cooled credential unused: {s:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_is_stable_across_two_workers() -> Result<()> {
    let (_mocks, mut snap) = three("random", [1, 1, 1], [0, 0, 0]).await;
    snap.models[0].affinity = Some(pb::Affinity {
        kind: "header".into(),
        header: "x-session-id".into(),
    });
    let (w1, _d1) = start_with_snapshot(&snap, &[]).await?;
    let (w2, _d2) = start_with_snapshot(&snap, &[]).await?;
    let c = client();
    let mut used = std::collections::HashSet::new();
    for i in 0..30 {
        let sid = format!("session-{i}");
        let mut seen = Vec::new();
        for base in [w1.url("http"), w2.url("http"), w1.url("http")] {
            let r = chat(
                &c,
                &base,
                &json!({"model":"m","messages":[]}),
                &[("x-session-id", &sid)],
            )
            .await;
            assert_eq!(r.status(), 200);
            seen.push(hdr(&r, "x-switchyard-backend"));
        }
        assert!(seen.iter().all(|b| *b == seen[0]), "{sid}: {seen:?}");
        used.insert(seen[0].clone());
    }
    assert_eq!(used.len(), 3, "sessions spread over all backends: {used:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_passive_and_active() -> Result<()> {
    // Passive: short ejection, then a trial request restores the backend.
    let (mocks, snap) = three("round_robin", [1, 1, 1], [0, 0, 0]).await;
    let (w, _d) = start_with_snapshot(&snap, &["--ejection-time", "300ms"]).await?;
    let base = w.url("http");
    mocks[0].set_default(Behavior::error(500));
    let d = distribution(&base, 30, &[]).await;
    assert!(!d.contains_key("a"), "{d:?}");
    mocks[0].reset();
    wait_for(
        "a serves again (half-open trial)",
        Duration::from_secs(10),
        || {
            let base = base.clone();
            async move {
                let d = distribution(&base, 6, &[]).await;
                Ok(d.contains_key("a").then_some(()))
            }
        },
    )
    .await?;
    drop(w);

    // Active: a probe marks the backend down with no traffic, and back up.
    let m = mock("probed").await;
    let other = mock("other").await;
    let mut p = provider("p", "openai", &m.openai_base(), &[("k", "s")]);
    p.health = Some(pb::HealthCheck {
        enabled: Some(true),
        interval_ms: 150,
        timeout_ms: 1000,
        probe: "models".into(),
        healthy_below: 500,
    });
    let q = provider("q", "openai", &other.openai_base(), &[("k", "s")]);
    let md = model(
        "m",
        "round_robin",
        vec![backend("p", "p", "", 1, 0), backend("q", "q", "", 1, 0)],
    );
    let (w, _d) = start_with_snapshot(&snapshot(1, vec![p, q], vec![md], keys()), &[]).await?;
    let base = w.url("http");
    let c = client();
    m.set_default(Behavior::error(503));
    wait_for("probe marks p unhealthy", Duration::from_secs(10), || {
        let c = c.clone();
        let base = w.url("ops");
        async move {
            let h: Value = c.get(format!("{base}/health")).send().await?.json().await?;
            Ok((h["models"]["m"]["backends"][0]["healthy"] == false).then_some(h))
        }
    })
    .await?;
    assert!(
        m.requests().iter().all(|r| r.path == "/v1/models"),
        "only probes reached p"
    );
    let d = distribution(&base, 10, &[]).await;
    assert_eq!(d.get("q"), Some(&10), "{d:?}");
    m.reset();
    wait_for("probe restores p", Duration::from_secs(10), || {
        let c = c.clone();
        let base = w.url("ops");
        async move {
            let h: Value = c.get(format!("{base}/health")).send().await?.json().await?;
            Ok((h["models"]["m"]["backends"][0]["healthy"] == true).then_some(()))
        }
    })
    .await?;
    let d = distribution(&base, 10, &[]).await;
    assert_eq!(d.get("p"), Some(&5), "{d:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_graceful_drain() -> Result<()> {
    let m = mock("slow").await;
    let snap = snapshot(
        7,
        vec![provider("oa", "openai", &m.openai_base(), &[("k", "s")])],
        vec![model("m", "round_robin", vec![backend("oa", "oa", "", 1, 0)])],
        keys(),
    );
    let (mut w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    let r = chat(&c, &base, &json!({"model":"m","messages":[]}), &[]).await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let text = c
        .get(format!("{}/metrics", w.url("ops")))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.contains("switchyard_requests_total{model=\"m\",backend=\"oa\",status_class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(text.contains("switchyard_config_version 7"), "{text}");
    assert!(!text.contains(KEY));

    // A slow stream in flight survives SIGTERM; the process then exits 0.
    m.set_default(Behavior {
        stream_chunks: 10,
        chunk_delay_ms: 100,
        ..Behavior::default()
    });
    let r = chat(&c, &base, &json!({"model":"m","stream":true,"messages":[]}), &[]).await;
    assert_eq!(r.status(), 200);
    // An idle keep-alive connection does not hold the drain up: it is closed at once
    // (the drain timeout is the default 30 s; the exit is awaited for 10).
    let mut idle = answered_once(w.addr("http")).await?;
    w.signal("TERM").await?;
    let text = r.text().await?;
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    closed_within(&mut idle, Duration::from_secs(10), None).await?;
    let status = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await??;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_stream_usage_is_counted_but_invisible_to_the_client() -> Result<()> {
    let m = mock("up").await;
    let snap = snapshot(
        1,
        vec![provider("oa", "openai", &m.openai_base(), &[("k", "s")])],
        vec![model(
            "gpt-x",
            "round_robin",
            vec![backend("oa", "oa", "real-x", 1, 0)],
        )],
        keys(),
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = client();
    let direct = c
        .post(format!("{}/chat/completions", m.openai_base()))
        .bearer_auth("s")
        .json(&json!({"model":"real-x","stream":true,"messages":[]}))
        .send()
        .await?
        .text()
        .await?;
    assert!(!direct.contains("\"usage\""), "{direct}");
    let via = chat(
        &c,
        &base,
        &json!({"model":"gpt-x","stream":true,"messages":[]}),
        &[],
    )
    .await
    .text()
    .await?;
    assert_eq!(
        via, direct,
        "client stream must be byte-identical to the no-usage stream"
    );
    let up = m.requests().pop().unwrap();
    assert_eq!(up.json().unwrap()["stream_options"]["include_usage"], true);
    // A client that asked for usage gets it, untouched.
    let with = chat(
        &c,
        &base,
        &json!({"model":"gpt-x","stream":true,"stream_options":{"include_usage":true},"messages":[]}),
        &[],
    )
    .await
    .text()
    .await?;
    assert!(with.contains("\"prompt_tokens\":12"), "{with}");
    let text = c
        .get(format!("{}/metrics", w.url("ops")))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.contains("switchyard_tokens_total{model=\"gpt-x\",type=\"prompt\"} 24"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_tokens_total{model=\"gpt-x\",type=\"completion\"} 96"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_and_least_connections() -> Result<()> {
    // least_latency: most traffic goes to the fast backend.
    let (mocks, snap) = three("least_latency", [1, 1, 1], [0, 0, 0]).await;
    mocks[1].set_default(Behavior::latency(30));
    mocks[2].set_default(Behavior::latency(30));
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let d = distribution(&w.url("http"), 60, &[]).await;
    assert!(
        d.get("a").copied().unwrap_or(0) > 30,
        "most traffic to the fast backend: {d:?}"
    );
    drop(w);

    // least_connections: while `a` holds two slow requests, new ones avoid it.
    let (mocks, snap) = three("least_connections", [1, 1, 1], [0, 0, 0]).await;
    mocks[0].set_default(Behavior::latency(1500));
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let mut slow = Vec::new();
    for _ in 0..2 {
        let base = base.clone();
        slow.push(tokio::spawn(async move {
            chat(
                &client(),
                &base,
                &json!({"model":"m","messages":[]}),
                &[("x-switchyard-backend", "a")],
            )
            .await
            .status()
        }));
    }
    wait_for("two requests in flight on a", Duration::from_secs(5), || async {
        Ok((mocks[0].request_count() == 2).then_some(()))
    })
    .await?;
    let d = distribution(&base, 20, &[]).await;
    assert!(!d.contains_key("a"), "{d:?}");
    for s in slow {
        assert_eq!(s.await?, 200);
    }
    Ok(())
}

/// A streamed chat request for model `m`, read whole: how long that took, and the text.
async fn timed_stream(base: &str) -> Result<(Duration, String)> {
    let t0 = std::time::Instant::now();
    let r = chat(
        &client(),
        base,
        &json!({"model":"m","stream":true,"messages":[]}),
        &[],
    )
    .await;
    anyhow::ensure!(r.status() == 200, "status {}", r.status());
    let text = r.text().await?;
    Ok((t0.elapsed(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_ends_with_error_event() -> Result<()> {
    let m = mock("slow").await;
    m.set_default(Behavior {
        stream_chunks: 3,
        chunk_delay_ms: 2000,
        ..Behavior::default()
    });
    let mut p = provider("oa", "openai", &m.openai_base(), &[("k", "s")]);
    p.idle_timeout_ms = 300;
    p.request_timeout_ms = 5000;
    let snap = snapshot(
        1,
        vec![p],
        vec![model("m", "round_robin", vec![backend("oa", "oa", "", 1, 0)])],
        keys(),
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let (took, text) = timed_stream(&w.url("http")).await?;
    assert!(took < Duration::from_millis(1900), "{took:?}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("data: {\"error\""), "{text}");
    assert!(last.contains("timed out"), "{text}");
    Ok(())
}

/// Waits for the worker to close `s` (EOF or reset), writing `trickle(n)` every 100 ms
/// meanwhile when given (a head sent a line at a time). Fails after `deadline`; returns how
/// long the close took.
async fn closed_within(
    s: &mut tokio::net::TcpStream,
    deadline: Duration,
    trickle: Option<fn(usize) -> String>,
) -> Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        anyhow::ensure!(
            t0.elapsed() < deadline,
            "the worker kept the connection open for {deadline:?}"
        );
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(t0.elapsed()),
                Ok(got) => anyhow::bail!("expected a close, got {:?}", String::from_utf8_lossy(&buf[..got])),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => if let Some(line) = trickle {
                if s.write_all(line(n).as_bytes()).await.is_err() {
                    return Ok(t0.elapsed());
                }
                n += 1;
            },
        }
    }
}

/// A keep-alive connection to the worker that has had one answer (`GET /health`), read
/// whole: accepted and now idle.
async fn answered_once(addr: std::net::SocketAddr) -> Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    anyhow::ensure!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(Ok(0), |v| v.trim().parse())?;
    while got.len() < head_end + length {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed in the middle of the answer");
        got.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_closes_slow_heads_and_idle_connections_but_not_long_streams() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let m = mock("long-stream").await;
    m.set_default(Behavior {
        stream_chunks: 6,
        chunk_delay_ms: 400,
        ..Behavior::default()
    });
    let snap = snapshot(
        1,
        vec![provider("oa", "openai", &m.openai_base(), &[("k", "s")])],
        vec![model("m", "round_robin", vec![backend("oa", "oa", "", 1, 0)])],
        keys(),
    );
    let limit = Duration::from_secs(1);
    let (w, _d) = start_with_snapshot(&snap, &["--header-timeout", "1s"]).await?;

    // A stream of 2.4 s, longer than the limit, is relayed whole: the limit is for heads.
    let (took, text) = timed_stream(&w.url("http")).await?;
    assert!(took >= Duration::from_millis(2400), "{took:?}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Slow loris: a head sent a header line every 100 ms never completes and is cut off.
    let mut s = tokio::net::TcpStream::connect(w.addr("http")).await?;
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await?;
    let took = closed_within(
        &mut s,
        Duration::from_secs(10),
        Some(|n| format!("x-trickle-{n}: 1\r\n")),
    )
    .await?;
    assert!(
        took >= limit - Duration::from_millis(100),
        "closed after {took:?}"
    );

    // Idle keep-alive: answered once, then quiet; closed once quiet for the limit.
    let mut s = answered_once(w.addr("http")).await?;
    let took = closed_within(&mut s, Duration::from_secs(10), None).await?;
    assert!(
        took >= limit - Duration::from_millis(100),
        "closed after {took:?}"
    );
    Ok(())
}
