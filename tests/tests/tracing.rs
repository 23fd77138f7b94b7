//! Traces end to end: the real worker and control binaries export OTLP to a real receiver
//! started here (`tests/otlp_receiver.py`: grpcio and the PyPI `opentelemetry-proto`
//! classes, so the wire format is checked by an implementation that is not ours), over
//! gRPC and over HTTP/protobuf. Checked: the span tree (a SERVER span, one CLIENT child per
//! upstream attempt, a retry after an injected 503 showing two), the GenAI attributes and
//! token counts, `traceparent` continuity (the client's trace and span, and the one the
//! upstream saw), the not-sampled path, that no secret appears, that a collector that
//! never answers neither slows nor fails requests (the drop counter moves), and
//! control's Admin RPC spans.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use switchyard_mock::{Behavior, MockOptions, MockServer};
use switchyard_proto as pb;
use switchyard_tests::{
    bin_path, repo_root, wait_for,
    worker::{backend, key, model, provider, snapshot, write_state},
    Proc,
};

const KEY: &str = "sk-sy-trace-key-0123456789";
const SECRET_A: &str = "sk-upstream-secret-aaaa";
const SECRET_B: &str = "sk-upstream-secret-bbbb";
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The receiver, writing spans to `file`.
async fn receiver(dir: &Path) -> Result<(Proc, PathBuf)> {
    let python = repo_root().join(".venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run scripts/ensure-deps.sh (creates .venv with grpcio and opentelemetry-proto)",
        python.display()
    );
    let file = dir.join("spans.jsonl");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(repo_root().join("tests/otlp_receiver.py")).arg(&file);
    Ok((Proc::spawn("otlp-receiver", cmd).await?, file))
}

fn spans(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Wait until the receiver holds spans of `trace_id` that `done` accepts.
async fn trace(file: &Path, trace_id: &str, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
    wait_for(
        &format!("the spans of trace {trace_id}"),
        Duration::from_secs(20),
        || {
            let got: Vec<Value> = spans(file)
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            let ok = done(&got);
            async move { Ok(ok.then_some(got)) }
        },
    )
    .await
}

// OTLP span kinds.
const SERVER: i64 = 2;
const CLIENT: i64 = 3;

fn of_kind(spans: &[Value], kind: i64) -> Vec<Value> {
    spans.iter().filter(|s| s["kind"] == kind).cloned().collect()
}

fn attr(s: &Value, k: &str) -> Value {
    s["attributes"][k].clone()
}

async fn start_worker(snap: &pb::Snapshot, env: &[(&str, String)]) -> Result<(Proc, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    write_state(dir.path(), snap)?;
    let mut cmd = tokio::process::Command::new(bin_path("switchyard-worker"));
    cmd.args(["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
        .args(["--control", "http://127.0.0.1:1"])
        .arg("--state-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info");
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok((Proc::spawn("worker", cmd).await?, dir))
}

/// A mock upstream and a snapshot with one model (`gpt-x`) on one OpenAI backend.
async fn one_backend() -> Result<(MockServer, pb::Snapshot)> {
    let m = MockServer::start(MockOptions {
        name: "up".into(),
        ..Default::default()
    })
    .await?;
    let snap = snapshot(
        1,
        vec![provider(
            "oa",
            "openai",
            &m.openai_base(),
            &[("cred-a", SECRET_A)],
        )],
        vec![model(
            "gpt-x",
            "round_robin",
            vec![backend("b", "oa", "real", 1, 0)],
        )],
        vec![key("tracer", KEY, &[])],
    );
    Ok((m, snap))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn metric(c: &reqwest::Client, ops: &str, name: &str) -> Result<f64> {
    let text = c.get(format!("{ops}/metrics")).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .with_context(|| format!("{name} not in /metrics"))?
        .trim()
        .parse()
        .context("metric value")
}

/// The `traceparent` headers the mock saw, in order.
fn upstream_traceparents(m: &MockServer) -> Vec<String> {
    m.requests()
        .iter()
        .filter_map(|r| r.header("traceparent").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_span_tree_genai_attributes_and_context() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (rx, file) = receiver(tmp.path()).await?;
    let m = MockServer::start(MockOptions {
        name: "up".into(),
        ..Default::default()
    })
    .await?;
    let snap = snapshot(
        1,
        vec![provider(
            "oa",
            "openai",
            &m.openai_base(),
            &[("cred-a", SECRET_A), ("cred-b", SECRET_B)],
        )],
        vec![model(
            "gpt-x",
            "round_robin",
            vec![
                backend("b-one", "oa", "real-one", 1, 0),
                backend("b-two", "oa", "real-two", 1, 0),
            ],
        )],
        vec![key("tracer", KEY, &[])],
    );
    let (w, _dir) = start_worker(
        &snap,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url("grpc")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ],
    )
    .await?;
    let base = w.url("http");
    let c = client();

    // 1. A client's trace, and a 503 first: two attempts.
    m.push(Behavior {
        status: Some(503),
        ..Default::default()
    });
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "secret prompt text"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    let got = trace(&file, CLIENT_TRACE, |s| s.len() >= 3).await?;
    assert_eq!(got.len(), 3, "{got:#?}");
    let server = of_kind(&got, SERVER).pop().context("no server span")?;
    let mut attempts = of_kind(&got, CLIENT);
    attempts.sort_by_key(|a| attr(a, "switchyard.attempt").as_i64());
    assert_eq!(attempts.len(), 2, "{got:#?}");
    assert_eq!(server["transport"], "grpc");
    assert_eq!(server["resource"]["service.name"], "switchyard-worker");
    // The client's span is the server span's parent; the server span the attempts'.
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
    assert_eq!(server["trace_state"], "vendor=abc");
    for a in &attempts {
        assert_eq!(a["parent_span_id"], server["span_id"]);
        assert!(a["start_ns"].as_u64() >= server["start_ns"].as_u64());
        assert!(a["end_ns"].as_u64() <= server["end_ns"].as_u64());
    }
    assert_eq!(server["name"], "chat gpt-x");
    for (k, v) in [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.request.model", json!("gpt-x")),
        (
            "gen_ai.usage.input_tokens",
            body["usage"]["prompt_tokens"].clone(),
        ),
        (
            "gen_ai.usage.output_tokens",
            body["usage"]["completion_tokens"].clone(),
        ),
        ("http.response.status_code", json!(200)),
        ("switchyard.stream", json!(false)),
        ("switchyard.retries", json!(1)),
        ("switchyard.attempts", json!(2)),
        ("switchyard.outcome", json!("ok")),
        ("switchyard.key", json!("tracer")),
    ] {
        assert_eq!(attr(&server, k), v, "{k}: {server:#}");
    }
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    // The first attempt failed and ejected its backend from the request; the second answered.
    let (first, second) = (&attempts[0], &attempts[1]);
    assert_eq!(attr(first, "http.response.status_code"), 503);
    assert_eq!(attr(first, "error.type"), "server_error");
    assert_eq!(attr(first, "switchyard.excluded"), "backend");
    assert_eq!(first["status"]["code"], 2, "{first:#}");
    assert_eq!(attr(second, "http.response.status_code"), 200);
    assert!(attr(second, "error.type").is_null());
    assert_ne!(
        attr(first, "switchyard.backend"),
        attr(second, "switchyard.backend")
    );
    assert_eq!(
        attr(&server, "gen_ai.response.model"),
        attr(second, "gen_ai.request.model")
    );
    assert_eq!(
        attr(&server, "switchyard.backend"),
        attr(second, "switchyard.backend")
    );
    for a in &attempts {
        assert_eq!(attr(a, "gen_ai.provider.name"), "openai");
        assert_eq!(attr(a, "server.address"), "127.0.0.1");
        assert_eq!(attr(a, "server.port"), m.addr().port());
        assert!(
            ["cred-a", "cred-b"].contains(&attr(a, "switchyard.credential").as_str().unwrap()),
            "{a:#}"
        );
        assert_eq!(
            a["name"],
            format!("chat {}", attr(a, "gen_ai.request.model").as_str().unwrap())
        );
    }
    // The upstream heard of the same trace, each attempt as its parent, with the state.
    let seen = m.requests();
    assert_eq!(seen.len(), 2);
    for (req, a) in seen.iter().zip(&attempts) {
        assert_eq!(
            req.header("traceparent"),
            Some(format!("00-{CLIENT_TRACE}-{}-01", a["span_id"].as_str().unwrap()).as_str())
        );
        assert_eq!(req.header("tracestate"), Some("vendor=abc"));
    }

    // 2. A stream without a client trace: a new root trace, time to first token.
    m.reset();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-x", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    r.text().await?;
    let tp = upstream_traceparents(&m)
        .pop()
        .context("no traceparent upstream")?;
    let new_trace = tp.split('-').nth(1).unwrap().to_string();
    assert_ne!(new_trace, CLIENT_TRACE);
    let got = trace(&file, &new_trace, |s| s.len() >= 2).await?;
    let server = of_kind(&got, SERVER).pop().context("no server span")?;
    assert_eq!(server["parent_span_id"], "", "a root span: {server:#}");
    assert_eq!(attr(&server, "switchyard.stream"), true);
    let ttft = attr(&server, "switchyard.time_to_first_token_seconds")
        .as_f64()
        .unwrap();
    let dur = (server["end_ns"].as_u64().unwrap() - server["start_ns"].as_u64().unwrap()) as f64 / 1e9;
    assert!(ttft > 0.0 && ttft <= dur, "ttft {ttft} of {dur}");
    assert_eq!(attr(&server, "gen_ai.usage.output_tokens"), 48);

    // 3. A client trace that is not sampled: no spans, its traceparent goes upstream as is.
    m.reset();
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{unsampled}-b7ad6b7169203331-00");
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("traceparent", &tp)
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(upstream_traceparents(&m), vec![tp.clone()]);

    // 4. Two `traceparent`s (W3C: which is the caller's is unknown): neither is continued;
    // a new trace, and only the worker's own goes upstream.
    m.reset();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("traceparent", &tp)
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let seen = m.requests();
    let sent: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let fresh = sent[0].split('-').nth(1).unwrap().to_string();
    assert!(fresh != CLIENT_TRACE && fresh != unsampled, "{sent:?}");
    let got = trace(&file, &fresh, |s| !of_kind(s, SERVER).is_empty()).await?;
    assert_eq!(
        of_kind(&got, SERVER)[0]["parent_span_id"],
        "",
        "a root span: {got:#?}"
    );

    // One more sampled request: once its spans are in, the one before would be too.
    m.reset();
    let r = c
        .post(format!("{base}/v1/embeddings"))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-x", "input": "hi"}))
        .send()
        .await?;
    let status = r.status();
    let last = upstream_traceparents(&m)
        .pop()
        .context("no traceparent upstream")?;
    let last = last.split('-').nth(1).unwrap().to_string();
    let got = trace(&file, &last, |s| !of_kind(s, SERVER).is_empty()).await?;
    let server = of_kind(&got, SERVER).pop().unwrap();
    assert_eq!(attr(&server, "gen_ai.operation.name"), "embeddings");
    assert_eq!(attr(&server, "http.response.status_code"), status.as_u16());
    assert!(spans(&file).iter().all(|s| s["trace_id"] != unsampled));

    // No secret, no prompt text, anywhere in what was exported.
    let all = std::fs::read_to_string(&file)?;
    for needle in [SECRET_A, SECRET_B, KEY, "secret prompt text"] {
        assert!(!all.contains(needle), "{needle} was exported");
    }
    let ops = w.url("ops");
    // The receiver writes a batch before it answers: the counter follows a moment later.
    wait_for("9 spans counted as exported", Duration::from_secs(10), || {
        let (c, ops) = (c.clone(), ops.clone());
        async move {
            let n = metric(&c, &ops, "switchyard_trace_spans_exported_total").await?;
            Ok((n >= 9.0).then_some(()))
        }
    })
    .await?;
    assert_eq!(
        metric(&c, &ops, "switchyard_trace_spans_dropped_total").await?,
        0.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_with_headers_from_env() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (rx, file) = receiver(tmp.path()).await?;
    let m = MockServer::start(MockOptions {
        name: "an".into(),
        ..Default::default()
    })
    .await?;
    let snap = snapshot(
        1,
        vec![provider("an", "anthropic", &m.url(), &[("cred-a", SECRET_A)])],
        vec![model(
            "claude-x",
            "round_robin",
            vec![backend("an-b", "an", "claude-real", 1, 0)],
        )],
        vec![key("tracer", KEY, &[])],
    );
    let (w, _dir) = start_worker(
        &snap,
        &[
            // The signal-specific endpoint is used as is (no `/v1/traces` appended).
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("{}/v1/traces", rx.url("http")),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-tenant=team-a".into()),
            ("OTEL_SERVICE_NAME", "edge-gateway".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
        ],
    )
    .await?;
    let c = client();
    let r = c
        .post(format!("{}/v1/messages", w.url("http")))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(
            &json!({"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let got = trace(&file, CLIENT_TRACE, |s| s.len() >= 2).await?;
    let server = of_kind(&got, SERVER).pop().context("no server span")?;
    assert_eq!(server["transport"], "http");
    assert_eq!(server["headers"]["x-collector-tenant"], "team-a");
    assert_eq!(server["resource"]["service.name"], "edge-gateway");
    assert_eq!(attr(&server, "gen_ai.provider.name"), "anthropic");
    assert_eq!(attr(&server, "gen_ai.request.model"), "claude-x");
    assert_eq!(attr(&server, "gen_ai.response.model"), "claude-real");
    assert_eq!(attr(&server, "gen_ai.usage.input_tokens"), 12);
    assert_eq!(attr(&server, "gen_ai.usage.output_tokens"), 48);
    let attempt = of_kind(&got, CLIENT).pop().context("no attempt span")?;
    assert_eq!(attr(&attempt, "switchyard.credential"), "cred-a");
    assert_eq!(
        m.requests()[0].header("traceparent"),
        Some(format!("00-{CLIENT_TRACE}-{}-01", attempt["span_id"].as_str().unwrap()).as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_neither_slows_nor_fails_requests() -> Result<()> {
    // Accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hole_addr = hole.local_addr()?;
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            conns.push(s);
        }
    });
    let (_m, snap) = one_backend().await?;
    let (mut w, _dir) = start_worker(
        &snap,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{hole_addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "10".into()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "4".into()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2".into()),
        ],
    )
    .await?;
    let c = client();
    let base = w.url("http");
    for i in 0..20 {
        let t0 = Instant::now();
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200, "request {i}");
        r.text().await?;
        // The export is stuck for a minute; requests are not.
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t0.elapsed()
        );
    }
    let ops = w.url("ops");
    // 40 spans: one export of 2 hangs, at most 4 wait, the rest were dropped.
    let dropped = wait_for("dropped spans", Duration::from_secs(10), || {
        let (c, ops) = (c.clone(), ops.clone());
        async move {
            let d = metric(&c, &ops, "switchyard_trace_spans_dropped_total").await?;
            Ok((d >= 30.0).then_some(d))
        }
    })
    .await?;
    assert!(dropped <= 40.0);
    assert_eq!(
        metric(&c, &ops, "switchyard_trace_spans_exported_total").await?,
        0.0
    );
    // Shutting down does not wait out the stuck export (30 s): the queued spans get one
    // last round of at most 5 s.
    let t0 = Instant::now();
    let status = w.terminate(Duration::from_secs(20)).await?;
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t0.elapsed()
    );
    held.abort();
    Ok(())
}

/// A collector URL with a password in it (basic auth) that fails: the warning names the
/// collector without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_password_never_reaches_the_log() -> Result<()> {
    const PASSWORD: &str = "collector-pass-5678";
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (_m, snap) = one_backend().await?;
    let (w, _dir) = start_worker(
        &snap,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://tracer:{PASSWORD}@{closed}"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "10".into()),
        ],
    )
    .await?;
    let r = client()
        .post(format!("{}/v1/chat/completions", w.url("http")))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let log = wait_for("the export warning", Duration::from_secs(10), || {
        let log = w.stderr_text();
        async move { Ok(log.contains("trace export failed").then_some(log)) }
    })
    .await?;
    assert!(!log.contains(PASSWORD), "{log}");
    assert!(log.contains(&format!("***@{closed}")), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_traces_admin_rpcs() -> Result<()> {
    use pb::v1::admin_client::AdminClient;
    use tonic::metadata::MetadataValue;

    let tmp = tempfile::tempdir()?;
    let (rx, file) = receiver(tmp.path()).await?;
    let admin_token = "admin-token-for-trace-tests-0123";
    let mut cmd = tokio::process::Command::new(bin_path("switchyard-control"));
    cmd.args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env("SWITCHYARD_ADMIN_TOKEN", admin_token)
        .env("SWITCHYARD_WORKER_TOKEN", "worker-token-for-trace-tests-4567")
        .env_remove("SWITCHYARD_MASTER_KEY")
        .env_remove("OTEL_SDK_DISABLED")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url("grpc"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("RUST_LOG", "info,sqlx=warn");
    let control = Proc::spawn("control", cmd).await?;
    let channel = tonic::transport::Channel::from_shared(control.url("grpc"))?
        .connect()
        .await?;
    let mut admin = AdminClient::new(channel);
    let call = |token: &str, trace: &str| {
        let mut r = tonic::Request::new(pb::v1::GetModelRequest { name: "nope".into() });
        r.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
        );
        r.metadata_mut().insert(
            "traceparent",
            MetadataValue::try_from(format!("00-{trace}-{CLIENT_SPAN}-01")).unwrap(),
        );
        r
    };
    let mut list = tonic::Request::new(pb::v1::ListModelsRequest::default());
    list.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {admin_token}")).unwrap(),
    );
    list.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")).unwrap(),
    );
    admin.list_models(list).await?;
    let missing = "11111111111111111111111111111111";
    let e = admin.get_model(call(admin_token, missing)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let denied = "22222222222222222222222222222222";
    let e = admin.get_model(call("wrong-token", denied)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // A call after the refused one: once its span is in, the refused one's would be too
    // (one queue, exported in order).
    let after = "33333333333333333333333333333333";
    let e = admin.get_model(call(admin_token, after)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    for (trace_id, method, code) in [
        (CLIENT_TRACE, "ListModels", 0),
        (missing, "GetModel", 5),
        (after, "GetModel", 5),
    ] {
        let got = trace(&file, trace_id, |s| !s.is_empty()).await?;
        assert_eq!(got.len(), 1, "{got:#?}");
        let s = &got[0];
        assert_eq!(s["kind"], SERVER);
        assert_eq!(s["name"], format!("switchyard.v1.Admin/{method}"));
        assert_eq!(s["parent_span_id"], CLIENT_SPAN);
        assert_eq!(s["resource"]["service.name"], "switchyard-control");
        assert_eq!(attr(s, "rpc.system"), "grpc");
        assert_eq!(attr(s, "rpc.service"), "switchyard.v1.Admin");
        assert_eq!(attr(s, "rpc.method"), method);
        assert_eq!(attr(s, "rpc.grpc.status_code"), code);
    }
    let all = std::fs::read_to_string(&file)?;
    assert!(!all.contains(admin_token) && !all.contains("wrong-token"));
    // An unauthenticated caller chose its trace and sampling: no span for it.
    assert!(!all.contains(denied), "a span for an unauthenticated call");
    // The workers' RPCs and the health service are not traced.
    assert!(spans(&file)
        .iter()
        .all(|s| s["name"].as_str().unwrap().starts_with("switchyard.v1.Admin/")));
    Ok(())
}
