//! Translation between the OpenAI and Anthropic dialects through a real worker (issue 17
//! §3): what the upstream receives (path, headers, model, body), what the client gets
//! (answers, streams and errors in its own dialect), usage booked from the translated
//! answers, and failover across vendors: a model whose tier-0 Anthropic backend is down is
//! served by its tier-1 OpenAI-kind backend, for a client of each dialect.
#![allow(clippy::unwrap_used)]

use anyhow::Result;
use serde_json::{json, Value};
use switchyard_mock::{Behavior, MockOptions, MockServer};
use switchyard_tests::worker::{backend, key, model, provider, snapshot, start_with_snapshot};

const KEY: &str = "sk-sy-translate-key-0123456789";

/// A port nothing listens on: bound, then closed.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// `switchyard_tokens` of `model` and `ty` (prompt/completion) on the worker's `/metrics`.
async fn tokens(c: &reqwest::Client, base: &str, model: &str, ty: &str) -> Result<u64> {
    let text = c.get(format!("{base}/metrics")).send().await?.text().await?;
    let want = [format!("model=\"{model}\""), format!("type=\"{ty}\"")];
    Ok(text
        .lines()
        .filter(|l| l.starts_with("switchyard_tokens") && want.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dialect_reaches_the_other_kind_translated() -> Result<()> {
    let m = MockServer::start(MockOptions::default()).await?;
    let mut short = model(
        "short",
        "round_robin",
        vec![backend("an", "an", "claude-up", 1, 0)],
    );
    short.default_max_tokens = Some(1000);
    let snap = snapshot(
        1,
        vec![
            provider("oa", "openai", &m.openai_base(), &[("k", "sk-up")]),
            provider("an", "anthropic", &m.url(), &[("k", "sk-ant-up")]),
        ],
        vec![
            model(
                "gpt-on-claude",
                "round_robin",
                vec![backend("an", "an", "claude-up", 1, 0)],
            ),
            model(
                "claude-on-gpt",
                "round_robin",
                vec![backend("oa", "oa", "gpt-up", 1, 0)],
            ),
            short,
        ],
        vec![key("main", KEY, &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = reqwest::Client::new();

    // An OpenAI client on an Anthropic backend: the upstream gets a Messages request.
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-on-claude", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-backend"], "an");
    let v: Value = r.json().await?;
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 12, "{v}");
    let seen = m.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.credential.as_deref(), Some("sk-ant-up"));
    let body = seen.json().unwrap();
    assert_eq!(body["model"], "claude-up");
    assert_eq!(body["max_tokens"], 4096, "the documented default: {body}");
    // ... or the model's own.
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "short", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(m.requests().pop().unwrap().json().unwrap()["max_tokens"], 1000);

    // An Anthropic client (Claude Code's headers and query) on an OpenAI-kind backend.
    let r = c
        .post(format!("{base}/v1/messages?beta=true"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219")
        .json(
            &json!({"model": "claude-on-gpt", "max_tokens": 16, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()?
        .starts_with("text/event-stream"));
    let text = r.text().await?;
    for ev in [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(text.contains(&format!("event: {ev}\n")), "{ev}: {text}");
    }
    let seen = m.requests().pop().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.query, None, "the client's query is its own API's");
    assert!(
        seen.headers.iter().all(|(n, _)| !n.starts_with("anthropic-")),
        "{:?}",
        seen.headers
    );
    let body = seen.json().unwrap();
    assert_eq!(body["model"], "gpt-up");
    assert_eq!(body["stream_options"]["include_usage"], true, "{body}");

    // Upstream errors come back in the client's dialect, status kept.
    m.push(Behavior::error(429));
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-on-claude", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    // The kept 429 after the retries found no other backend.
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    m.set_default(Behavior::error(400));
    let r = c
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", KEY)
        .json(&json!({"model": "claude-on-gpt", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(
        (&v["type"], &v["error"]["type"]),
        (&json!("error"), &json!("invalid_request_error")),
        "{v}"
    );
    m.set_default(Behavior::default());

    // A field the other dialect cannot express: 400 naming it, and no upstream request.
    let before = m.request_count();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-on-claude", "seed": 7, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["param"], "seed", "{v}");
    assert_eq!(m.request_count(), before);

    // `GET /v1/models`: Anthropic's list for an Anthropic-style request, OpenAI's else.
    let v: Value = c
        .get(format!("{base}/v1/models"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["data"][0]["type"], "model", "{v}");
    assert_eq!(v["data"][0]["id"], "claude-on-gpt", "{v}");
    assert_eq!(
        (&v["first_id"], &v["last_id"]),
        (&json!("claude-on-gpt"), &json!("short"))
    );
    assert_eq!(v["has_more"], false, "{v}");
    let r = c
        .get(format!("{base}/v1/models"))
        .header("x-api-key", "sk-wrong-key-xxxxxxxxxxxx")
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    assert_eq!(v["type"], "error", "Anthropic's error shape: {v}");
    let v: Value = c
        .get(format!("{base}/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        (&v["object"], &v["data"][0]["object"]),
        (&json!("list"), &json!("model")),
        "{v}"
    );

    // Usage: the two successful translated requests, as their translators counted them.
    assert_eq!(tokens(&c, &w.url("ops"), "gpt-on-claude", "prompt").await?, 12);
    assert_eq!(
        tokens(&c, &w.url("ops"), "gpt-on-claude", "completion").await?,
        48
    );
    assert_eq!(tokens(&c, &w.url("ops"), "claude-on-gpt", "prompt").await?, 12);
    assert_eq!(
        tokens(&c, &w.url("ops"), "claude-on-gpt", "completion").await?,
        48
    );
    Ok(())
}

/// Tier 0 is an Anthropic backend that is down, tier 1 an OpenAI-kind one: both dialects
/// are served by tier 1 (the OpenAI client passthrough, the Anthropic one translated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_fails_over_across_vendors_for_either_dialect() -> Result<()> {
    let m = MockServer::start(MockOptions::default()).await?;
    let snap = snapshot(
        1,
        vec![
            provider("an-down", "anthropic", &dead_url(), &[("k", "sk-ant-up")]),
            provider("oa", "openai", &m.openai_base(), &[("k", "sk-up")]),
        ],
        vec![model(
            "mixed",
            "round_robin",
            vec![
                backend("claude", "an-down", "claude-up", 1, 0),
                backend("gpt", "oa", "gpt-up", 1, 1),
            ],
        )],
        vec![key("main", KEY, &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = reqwest::Client::new();
    for _ in 0..2 {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model": "mixed", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-switchyard-backend"], "gpt");
        let v: Value = r.json().await?;
        assert_eq!(v["object"], "chat.completion", "{v}");

        let r = c
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "mixed", "max_tokens": 16,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-switchyard-backend"], "gpt");
        let v: Value = r.json().await?;
        assert_eq!(v["type"], "message", "{v}");
        assert!(v["content"][0]["text"].is_string(), "{v}");
    }
    Ok(())
}

/// A Responses API client on an Anthropic backend: the translated answer's ids are gateway
/// ids (streamed or not), a stateful call on one says nothing is stored, and a
/// `previous_response_id` naming one is refused by name, with no upstream request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_responses_carry_gateway_ids() -> Result<()> {
    let m = MockServer::start(MockOptions::default()).await?;
    let snap = snapshot(
        1,
        vec![provider("an", "anthropic", &m.url(), &[("k", "sk-ant-up")])],
        vec![model(
            "resp-on-claude",
            "round_robin",
            vec![backend("an", "an", "claude-up", 1, 0)],
        )],
        vec![key("main", KEY, &[])],
    );
    let (w, _d) = start_with_snapshot(&snap, &[]).await?;
    let base = w.url("http");
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v1/responses"))
        .bearer_auth(KEY)
        .json(&json!({"model": "resp-on-claude", "input": "hi"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    let id = v["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_sy1"), "{v}");
    assert_eq!(m.requests().pop().unwrap().path, "/v1/messages");

    // Streamed: every event's response id is the gateway's too.
    let text = c
        .post(format!("{base}/v1/responses"))
        .bearer_auth(KEY)
        .json(&json!({"model": "resp-on-claude", "input": "hi", "stream": true}))
        .send()
        .await?
        .text()
        .await?;
    let mut ids = 0;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let ev: Value = serde_json::from_str(line)?;
        if let Some(rid) = ev["response"]["id"].as_str() {
            assert!(rid.starts_with("resp_sy1"), "{rid} in {text}");
            ids += 1;
        }
    }
    assert!(ids >= 2, "created and completed carry the id: {text}");

    // Nothing is stored on that side: said so, without asking the upstream.
    let before = m.request_count();
    let r = c
        .get(format!("{base}/v1/responses/{id}"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await?;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("translation"),
        "{v}"
    );
    let r = c
        .post(format!("{base}/v1/responses"))
        .bearer_auth(KEY)
        .json(&json!({"model": "resp-on-claude", "input": "more", "previous_response_id": id}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["param"], "previous_response_id", "{v}");
    assert_eq!(m.request_count(), before);
    Ok(())
}
