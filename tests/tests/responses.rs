//! The Responses API through the real `switchyard-worker` binary: usage booked from the
//! non-streamed body and from `response.completed`, and the stateful calls (`GET`,
//! `DELETE`, `cancel`, `input_items`, `previous_response_id`) reaching the account that
//! made the response, from another worker with no shared store. The mocks keep each
//! response for the credential that made it (another one gets 404/400), and log the
//! credential each request carried.
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use serde_json::{json, Value};
use switchyard_mock::{MockOptions, MockServer};
use switchyard_proto as pb;
use switchyard_tests::worker::{backend, key, model, provider, snapshot, start_with_snapshot};

const KEY: &str = "sk-sy-resp-key-0123456789";
const OTHER: &str = "sk-sy-other-key-0123456789";

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

/// Two providers on two mocks: `oa` with credentials `sa` and `sb`, `ob` with `sc`; model
/// `gpt-r` over both, round robin.
async fn setup() -> (MockServer, MockServer, pb::Snapshot) {
    let (m1, m2) = (mock("one").await, mock("two").await);
    let snap = snapshot(
        1,
        vec![
            provider("oa", "openai", &m1.openai_base(), &[("ka", "sa"), ("kb", "sb")]),
            provider("ob", "openai", &m2.openai_base(), &[("kc", "sc")]),
        ],
        vec![
            model(
                "gpt-r",
                "round_robin",
                vec![
                    backend("b1", "oa", "up-1", 1, 0),
                    backend("b2", "ob", "up-2", 1, 0),
                ],
            ),
            model("gpt-two", "round_robin", vec![backend("b3", "ob", "up-3", 1, 0)]),
        ],
        vec![key("main", KEY, &[]), key("other", OTHER, &[])],
    );
    (m1, m2, snap)
}

/// The credential of the last request either mock saw, and the mock.
fn last_seen(m1: &MockServer, m2: &MockServer) -> (String, String) {
    let mut all: Vec<(std::time::SystemTime, String, String)> = Vec::new();
    for (name, m) in [("one", m1), ("two", m2)] {
        for r in m.requests() {
            all.push((r.time, name.to_string(), r.credential.unwrap_or_default()));
        }
    }
    let (_, m, c) = all.into_iter().max_by_key(|(t, _, _)| *t).unwrap();
    (m, c)
}

/// Every response id in `text` is a gateway id.
fn only_gateway_ids(text: &str) -> bool {
    text.match_indices("\"resp_")
        .all(|(i, _)| text[i + 1..].starts_with("resp_sy1"))
}

/// The data of each event in an SSE stream.
fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_booked_and_their_state_found_from_any_worker() -> Result<()> {
    let (m1, m2, snap) = setup().await;
    let (w1, _d1) = start_with_snapshot(&snap, &[]).await?;
    let (w2, _d2) = start_with_snapshot(&snap, &[]).await?;
    let (b1, b2) = (w1.url("http"), w2.url("http"));
    let c = client();

    // Six responses, plain and streamed, over the three accounts (on worker 1).
    let mut made: Vec<(String, (String, String))> = Vec::new();
    for i in 0..6 {
        let stream = i % 2 == 1;
        let r = c
            .post(format!("{b1}/v1/responses"))
            .bearer_auth(KEY)
            .json(&json!({"model": "gpt-r", "input": "hi", "stream": stream}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let text = r.text().await?;
        assert!(only_gateway_ids(&text), "{text}");
        let id = if stream {
            let evs = events(&text);
            let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
            assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
            assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
            assert!(kinds.contains(&"response.output_text.delta"), "{kinds:?}");
            let done = evs.last().unwrap();
            assert_eq!(done["response"]["usage"]["input_tokens"], 12);
            assert_eq!(evs[0]["response"]["id"], done["response"]["id"]);
            done["response"]["id"].as_str().unwrap().to_string()
        } else {
            let v: Value = serde_json::from_str(&text)?;
            assert_eq!(v["usage"]["output_tokens"], 48);
            v["id"].as_str().unwrap().to_string()
        };
        assert!(id.starts_with("resp_sy1"), "{id}");
        made.push((id, last_seen(&m1, &m2)));
    }
    let accounts: std::collections::HashSet<_> = made.iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(accounts.len(), 3, "round robin over the accounts: {made:?}");

    // Usage: every response booked, streamed ones from `response.completed`.
    let text = c
        .get(format!("{}/metrics", w1.url("ops")))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        text.contains("switchyard_tokens_total{model=\"gpt-r\",type=\"prompt\"} 72"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_tokens_total{model=\"gpt-r\",type=\"completion\"} 288"),
        "{text}"
    );

    // Each stateful call, through worker 2, reaches the account that made the response.
    for (id, account) in &made {
        for (method, sub) in [("GET", ""), ("GET", "/input_items"), ("POST", "/cancel")] {
            let url = format!("{b2}/v1/responses/{id}{sub}");
            let rb = if method == "GET" {
                c.get(&url)
            } else {
                c.post(&url)
            };
            let r = rb.bearer_auth(KEY).send().await?;
            assert_eq!(r.status(), 200, "{method} {sub}");
            let body = r.text().await?;
            assert!(only_gateway_ids(&body), "{body}");
            if sub != "/input_items" {
                let v: Value = serde_json::from_str(&body)?;
                assert_eq!(v["id"].as_str(), Some(id.as_str()), "{body}");
            }
            assert_eq!(&last_seen(&m1, &m2), account, "{method} {sub}");
        }
        // A continuation, on worker 2: the mock answers 400 to another account.
        let r = c
            .post(format!("{b2}/v1/responses"))
            .bearer_auth(KEY)
            .json(&json!({"model": "gpt-r", "input": "and?", "previous_response_id": id}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await?;
        assert_eq!(v["previous_response_id"].as_str(), Some(id.as_str()));
        assert_eq!(&last_seen(&m1, &m2), account);
        let up = [&m1, &m2]
            .iter()
            .flat_map(|m| m.requests())
            .max_by_key(|r| r.time)
            .unwrap();
        let sent = up.json().unwrap()["previous_response_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            sent.starts_with("resp_") && !sent.starts_with("resp_sy1"),
            "{sent}"
        );
    }

    // A continuation through a model whose providers did not make the response: refused.
    let (by_one, _) = made.iter().find(|(_, (m, _))| m == "one").unwrap();
    let r = c
        .post(format!("{b1}/v1/responses"))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-two", "input": "and?", "previous_response_id": by_one}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);

    // Another client key, or a forged id: as an id that does not exist.
    let (id, _) = &made[0];
    let r = c
        .get(format!("{b2}/v1/responses/{id}"))
        .bearer_auth(OTHER)
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let mut forged = id.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let r = c
        .get(format!("{b2}/v1/responses/{forged}"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{b2}/v1/responses/resp_raw"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    // DELETE, on worker 1: gone for good, as the account says.
    let r = c
        .delete(format!("{b1}/v1/responses/{id}"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(
        (v["id"].as_str(), v["deleted"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    let r = c
        .get(format!("{b2}/v1/responses/{id}"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    Ok(())
}

/// A conversation that does not store its responses (`store: false`, its encrypted
/// reasoning sent back each turn) keeps to one account by its session header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_to_one_account() -> Result<()> {
    let (m1, m2, snap) = setup().await;
    let (w1, _d1) = start_with_snapshot(&snap, &[]).await?;
    let (w2, _d2) = start_with_snapshot(&snap, &[]).await?;
    let c = client();
    let mut seen: HashMap<&str, std::collections::HashSet<(String, String)>> = HashMap::new();
    for session in ["s-1", "s-2", "s-3"] {
        for i in 0..4 {
            let base = if i % 2 == 0 {
                w1.url("http")
            } else {
                w2.url("http")
            };
            let r = c
                .post(format!("{base}/v1/responses"))
                .bearer_auth(KEY)
                .header("session_id", session)
                .json(&json!({"model": "gpt-r", "store": false, "input": [
                    {"type": "reasoning", "encrypted_content": "gAAAA", "summary": []},
                    {"role": "user", "content": "next"}]}))
                .send()
                .await?;
            assert_eq!(r.status(), 200);
            seen.entry(session).or_default().insert(last_seen(&m1, &m2));
        }
    }
    for (s, accounts) in &seen {
        assert_eq!(accounts.len(), 1, "{s}: {accounts:?}");
    }
    Ok(())
}

/// The usage event of a Responses request, plain and streamed, carries the cached and
/// reasoning tokens (the worker as a library, for its usage sink).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_usage_events_carry_cached_and_reasoning_tokens() -> Result<()> {
    use std::sync::Arc;
    use switchyard_mock::{Behavior, Usage};
    use switchyard_worker::account::ChannelSink;
    let m = mock("up").await;
    m.set_default(Behavior {
        usage: Usage {
            prompt_tokens: 11,
            completion_tokens: 7,
            cached_tokens: 3,
            reasoning_tokens: 2,
            cache_write_tokens: 0,
        },
        ..Behavior::default()
    });
    let snap = snapshot(
        1,
        vec![provider("oa", "openai", &m.openai_base(), &[("k", "s")])],
        vec![model(
            "gpt-r",
            "round_robin",
            vec![backend("b", "oa", "up", 1, 0)],
        )],
        vec![key("main", KEY, &[])],
    );
    let dir = tempfile::tempdir()?;
    switchyard_tests::worker::write_state(dir.path(), &snap)?;
    let (sink, mut rx) = ChannelSink::new(100);
    let mut cfg = switchyard_worker::Config::new("127.0.0.1:0".parse()?);
    cfg.state_dir = Some(dir.path().to_path_buf());
    cfg.usage_sink = Some(Arc::new(sink));
    let running = switchyard_worker::start(cfg).await?;
    let base = format!("http://{}", running.http_addr());
    let c = client();
    for stream in [false, true] {
        let r = c
            .post(format!("{base}/v1/responses"))
            .bearer_auth(KEY)
            .json(&json!({"model": "gpt-r", "input": "hi", "stream": stream}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        r.bytes().await?;
        let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await?
            .unwrap();
        assert_eq!(e.stream, stream);
        let u = e.usage;
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (11, 7, 18, 3, 2),
            "stream {stream}: {e:?}"
        );
    }
    running.shutdown().await;
    Ok(())
}
