//! The mock upstream, in-process and as a binary: every endpoint, streams, faults, control plane.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use switchyard_mock::{Behavior, Fault, MockOptions, MockServer, Stats, Usage, DEFAULT_REPLY};
use switchyard_tests::{bin_path, wait_for, Proc};

async fn mock() -> MockServer {
    MockServer::start(MockOptions {
        name: "m1".into(),
        ..MockOptions::default()
    })
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One SSE event: optional `event:` name and its `data:` payload.
#[derive(Debug)]
struct Sse {
    event: Option<String>,
    data: String,
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut ev = Sse {
                event: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    ev.event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    ev.data.push_str(d);
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            ev
        })
        .collect()
}

async fn post(url: String, body: Value) -> reqwest::Response {
    client().post(url).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn chat_completion_plain() {
    let m = mock().await;
    let r = client()
        .post(format!("{}/chat/completions", m.openai_base()))
        .header("authorization", "Bearer sk-one")
        .header("x-request-id", "req-42")
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-name"], "m1");
    assert_eq!(r.headers()["x-request-id"], "req-42");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 48);
    assert_eq!(v["usage"]["total_tokens"], 60);
}

#[tokio::test]
async fn chat_stream_without_and_with_include_usage() {
    let m = mock().await;
    m.set_default(Behavior {
        stream_chunks: 7,
        usage: Usage {
            prompt_tokens: 3,
            completion_tokens: 9,
            cached_tokens: 2,
            reasoning_tokens: 4,
            cache_write_tokens: 0,
        },
        ..Behavior::default()
    });
    for include_usage in [false, true] {
        let mut body = json!({"model": "gpt-x", "stream": true, "messages": []});
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = post(format!("{}/chat/completions", m.openai_base()), body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let events = parse_sse(&r.text().await.unwrap());
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "gpt-x"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let with_choices: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"].as_array().unwrap().is_empty())
            .collect();
        // role chunk + 7 content chunks + finish chunk
        assert_eq!(with_choices.len(), 9);
        let text: String = with_choices
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, DEFAULT_REPLY);
        assert_eq!(
            with_choices.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        let usage_chunks: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"].as_array().unwrap().is_empty())
            .collect();
        if include_usage {
            assert_eq!(usage_chunks.len(), 1);
            assert!(std::ptr::eq(usage_chunks[0], chunks.last().unwrap()));
            let u = &usage_chunks[0]["usage"];
            assert_eq!(u["prompt_tokens"], 3);
            assert_eq!(u["completion_tokens"], 9);
            assert_eq!(u["total_tokens"], 12);
            assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 2);
            assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 4);
        } else {
            assert!(usage_chunks.is_empty(), "usage chunk sent without include_usage");
            assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        }
    }
}

#[tokio::test]
async fn completions_plain_and_stream() {
    let m = mock().await;
    let v: Value = post(
        format!("{}/completions", m.openai_base()),
        json!({"model": "davinci", "prompt": "x"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "davinci");
    assert_eq!(v["choices"][0]["text"], DEFAULT_REPLY);
    assert_eq!(v["usage"]["total_tokens"], 60);

    let r = post(
        format!("{}/completions", m.openai_base()),
        json!({"model": "davinci", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 48);
}

#[tokio::test]
async fn embeddings_and_models() {
    let m = mock().await;
    let v: Value = post(
        format!("{}/embeddings", m.openai_base()),
        json!({"model": "emb", "input": ["a", "b"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert!(v["data"][0]["embedding"].as_array().unwrap().len() >= 4);
    assert_eq!(v["usage"]["prompt_tokens"], 12);

    let v: Value = client()
        .get(format!("{}/models", m.openai_base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "mock-model");
    let v: Value = client()
        .get(format!("{}/v1/models", m.url()))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["has_more"], false);
}

#[tokio::test]
async fn anthropic_messages_plain_and_stream() {
    let m = mock().await;
    m.set_default(Behavior {
        usage: Usage {
            prompt_tokens: 20,
            completion_tokens: 30,
            cached_tokens: 5,
            reasoning_tokens: 0,
            cache_write_tokens: 0,
        },
        ..Behavior::default()
    });
    let r = client()
        .post(format!("{}/v1/messages?beta=true", m.url()))
        .header("x-api-key", "ant-key")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-x", "max_tokens": 10, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-x");
    assert_eq!(v["content"][0]["text"], DEFAULT_REPLY);
    assert_eq!(v["usage"]["input_tokens"], 20);
    assert_eq!(v["usage"]["output_tokens"], 30);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 5);

    let r = post(
        format!("{}/v1/messages", m.url()),
        json!({"model": "claude-x", "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", 5));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    let data: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    for (e, d) in events.iter().zip(&data) {
        assert_eq!(
            d["type"],
            e.event.as_deref().unwrap(),
            "event name matches data type"
        );
    }
    assert_eq!(data[0]["message"]["model"], "claude-x");
    assert_eq!(data[0]["message"]["usage"]["input_tokens"], 20);
    assert_eq!(data[0]["message"]["usage"]["cache_read_input_tokens"], 5);
    let text: String = data.iter().filter_map(|d| d["delta"]["text"].as_str()).collect();
    assert_eq!(text, DEFAULT_REPLY);
    let delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 30);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");

    let v: Value = post(
        format!("{}/v1/messages/count_tokens?beta=true", m.url()),
        json!({"model": "claude-x", "messages": []}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["input_tokens"], 20);
}

#[tokio::test]
async fn other_paths_echo_or_404() {
    let m = mock().await;
    let r = post(
        format!("{}/v1/images/generations", m.url()),
        json!({"model": "o3"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/v1/images/generations");
    assert_eq!(v["model"], "o3");
    let r = client().get(format!("{}/nope", m.url())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("/nope"));
}

#[tokio::test]
async fn rate_limit_with_retry_after_in_both_dialects() {
    let m = mock().await;
    m.set_default(Behavior::rate_limited(7));
    let r = post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());
    assert!(v["error"]["type"].is_string());

    let r = post(
        format!("{}/v1/messages", m.url()),
        json!({"model": "a", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");

    m.set_default(Behavior::error(529));
    let r = post(format!("{}/v1/messages", m.url()), json!({"model": "a"})).await;
    assert_eq!(r.status(), 529);
    assert!(r.headers().get("retry-after").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn drop_closes_without_an_answer() {
    let m = mock().await;
    m.push(Behavior::fault(Fault::Drop));
    let err = client()
        .post(format!("{}/chat/completions", m.openai_base()))
        .json(&json!({"model": "a"}))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none(), "{err:?}");
    // The queue is consumed: the next request is answered.
    let r = post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn hang_never_answers() {
    let m = mock().await;
    m.set_default(Behavior::fault(Fault::Hang));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = c
        .post(format!("{}/v1/messages", m.url()))
        .json(&json!({"model": "a"}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(m.request_count(), 1);
    // Shutdown completes even with a hung request in flight.
    tokio::time::timeout(Duration::from_secs(5), m.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn cut_stream_aborts_after_n_chunks() {
    let m = mock().await;
    m.set_default(Behavior {
        fault: Fault::CutStream { after_chunks: 2 },
        stream_chunks: 10,
        ..Behavior::default()
    });
    for (url, prelude) in [
        (format!("{}/chat/completions", m.openai_base()), 1),
        (format!("{}/v1/messages", m.url()), 3),
    ] {
        let r = post(url, json!({"model": "a", "stream": true})).await;
        assert_eq!(r.status(), 200);
        let mut s = r.bytes_stream();
        let mut got = Vec::new();
        let mut failed = false;
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => got.extend_from_slice(&b),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "the stream ended cleanly instead of being cut");
        let events = parse_sse(&String::from_utf8(got).unwrap());
        assert_eq!(events.len(), prelude + 2, "{events:?}");
    }
    // Non-stream: a truncated body.
    let err = client()
        .post(format!("{}/chat/completions", m.openai_base()))
        .json(&json!({"model": "a"}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap_err();
    assert!(err.is_body() || err.is_decode(), "{err:?}");
}

#[tokio::test]
async fn reject_credentials_gives_401_in_both_dialects() {
    let m = mock().await;
    m.set_default(Behavior {
        reject_credentials: vec!["bad".into()],
        ..Behavior::default()
    });
    let r = client()
        .post(format!("{}/chat/completions", m.openai_base()))
        .bearer_auth("bad")
        .json(&json!({"model": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");

    let r = client()
        .post(format!("{}/v1/messages", m.url()))
        .header("x-api-key", "bad")
        .json(&json!({"model": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");

    let r = client()
        .post(format!("{}/v1/messages", m.url()))
        .header("x-api-key", "good")
        .json(&json!({"model": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn custom_credential_header() {
    let m = MockServer::start(MockOptions {
        credential_header: Some("X-Custom-Auth".into()),
        ..MockOptions::default()
    })
    .await
    .unwrap();
    client()
        .post(format!("{}/chat/completions", m.openai_base()))
        .header("x-custom-auth", "Bearer tok-9")
        .json(&json!({"model": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(m.stats().by_credential.get("tok-9"), Some(&1));
}

#[tokio::test]
async fn push_queue_is_fifo_then_default() {
    let m = mock().await;
    m.set_default(Behavior::error(503));
    m.push(Behavior::error(500));
    m.push(Behavior::rate_limited(1));
    m.push(Behavior::default());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = post(
            format!("{}/chat/completions", m.openai_base()),
            json!({"model": "a"}),
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [500, 429, 200, 503, 503]);
    m.reset();
    let r = post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await;
    assert_eq!(r.status(), 200, "reset restores the default behaviour");
}

#[tokio::test]
async fn stats_and_request_log() {
    let m = mock().await;
    for (cred, model) in [("k1", "a"), ("k1", "b"), ("k2", "a")] {
        client()
            .post(format!("{}/chat/completions?x=1", m.openai_base()))
            .bearer_auth(cred)
            .header("X-Trace", "t")
            .json(&json!({"model": model}))
            .send()
            .await
            .unwrap();
    }
    client()
        .post(format!("{}/v1/messages", m.url()))
        .header("x-api-key", "ak")
        .json(&json!({"model": "c", "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let s = m.stats();
    assert_eq!(s.total, 4);
    assert_eq!(m.request_count(), 4);
    assert_eq!(s.by_credential["k1"], 2);
    assert_eq!(s.by_credential["k2"], 1);
    assert_eq!(s.by_credential["ak"], 1);
    assert_eq!(s.by_model["a"], 2);
    assert_eq!(s.by_path["/v1/chat/completions"], 3);
    assert_eq!(s.by_path["/v1/messages"], 1);
    assert_eq!(s.by_status[&200], 4);

    let log = m.requests();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, "/v1/chat/completions");
    assert_eq!(log[0].query.as_deref(), Some("x=1"));
    assert_eq!(log[0].credential.as_deref(), Some("k1"));
    assert_eq!(log[0].header("x-trace"), Some("t"));
    assert!(log[0].headers.iter().any(|(k, _)| k == "x-trace"));
    assert_eq!(log[0].json().unwrap()["model"], "a");
    assert!(log[3].stream);
    assert_eq!(log[3].model.as_deref(), Some("c"));

    m.reset();
    let s = m.stats();
    assert_eq!(
        s,
        Stats {
            open_connections: s.open_connections,
            ..Stats::default()
        },
        "reset clears every counter (open connections are live, not counters)"
    );
    assert!(m.requests().is_empty());
}

#[tokio::test]
async fn latency_and_chunk_delay() {
    let m = mock().await;
    m.push(Behavior::latency(150));
    let t = Instant::now();
    post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await;
    assert!(t.elapsed() >= Duration::from_millis(150));

    m.push(Behavior {
        stream_chunks: 4,
        chunk_delay_ms: 60,
        ..Behavior::default()
    });
    let t = Instant::now();
    let r = post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a", "stream": true}),
    )
    .await;
    let headers_at = t.elapsed();
    r.text().await.unwrap();
    assert!(
        headers_at < Duration::from_millis(200),
        "headers are not delayed by chunk pacing"
    );
    assert!(t.elapsed() >= Duration::from_millis(240));
}

#[tokio::test]
async fn control_plane_over_http() {
    let m = mock().await;
    let c = client();
    let r = c
        .post(format!("{}/_mock/push", m.url()))
        .body(r#"{"status":418}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/_mock/default", m.url()))
        .body(r#"{"reply":"pong"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad = c
        .post(format!("{}/_mock/default", m.url()))
        .body(r#"{"no_such_field":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let r = post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await;
    assert_eq!(r.status(), 418);
    let v: Value = post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "pong");

    let s: Stats = c
        .get(format!("{}/_mock/stats", m.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s.total, 2, "control requests are not counted");
    let log: Vec<Value> = c
        .get(format!("{}/_mock/requests", m.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(log[0]["body"].as_str().unwrap()).unwrap()["model"],
        "a"
    );

    c.post(format!("{}/_mock/reset", m.url())).send().await.unwrap();
    assert_eq!(m.request_count(), 0);
    let v: Value = post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], DEFAULT_REPLY);
}

#[tokio::test]
async fn connections_are_counted_and_dropping_the_handle_stops_the_server() {
    let m = mock().await;
    let c = client();
    c.get(format!("{}/v1/models", m.url())).send().await.unwrap();
    assert_eq!(m.open_connections(), 1, "keep-alive connection stays open");
    drop(c);
    wait_for("connection close", Duration::from_secs(5), || {
        let n = m.open_connections();
        async move { Ok((n == 0).then_some(())) }
    })
    .await
    .unwrap();

    let addr = m.addr();
    let m2 = m.clone();
    drop(m);
    // A clone keeps it alive.
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(m2);
    wait_for("listener closed", Duration::from_secs(5), || async move {
        Ok(tokio::net::TcpStream::connect(addr).await.is_err().then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn binary_prints_listening_line_and_exits_on_sigterm() {
    let mut cmd = tokio::process::Command::new(bin_path("switchyard-mock"));
    cmd.args([
        "--name",
        "procmock",
        "--threads",
        "1",
        "--stream-chunks",
        "3",
        "--default",
        r#"{"reply":"from the binary"}"#,
    ]);
    let mut p = Proc::spawn("mock", cmd).await.unwrap();
    let url = p.url("http");
    let r = post(
        format!("{url}/v1/chat/completions"),
        json!({"model": "z", "stream": true}),
    )
    .await;
    assert_eq!(r.headers()["x-mock-name"], "procmock");
    let events = parse_sse(&r.text().await.unwrap());
    assert_eq!(events.len(), 1 + 3 + 1 + 1, "role, 3 content, finish, [DONE]");
    let text: String = events[1..4]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["choices"][0]["delta"]["content"].to_string()
        })
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    assert_eq!(text, "from the binary");
    let status = p.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", p.stderr_text());
}

#[tokio::test]
async fn cut_stream_past_the_last_chunk_still_cuts_before_the_end() {
    let m = mock().await;
    m.set_default(Behavior {
        fault: Fault::CutStream { after_chunks: 3 },
        stream_chunks: 3,
        ..Behavior::default()
    });
    let r = post(
        format!("{}/v1/messages", m.url()),
        json!({"model": "a", "stream": true}),
    )
    .await;
    let mut s = r.bytes_stream();
    let mut got = Vec::new();
    let mut failed = false;
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the stream was not cut");
    let text = String::from_utf8(got).unwrap();
    assert_eq!(
        text.matches("content_block_delta").count(),
        6,
        "3 deltas (name + type each)"
    );
    assert!(!text.contains("message_stop"));
}

#[tokio::test]
async fn no_request_log_still_counts() {
    let m = MockServer::start(MockOptions {
        no_request_log: true,
        ..MockOptions::default()
    })
    .await
    .unwrap();
    post(
        format!("{}/chat/completions", m.openai_base()),
        json!({"model": "a"}),
    )
    .await;
    assert_eq!(m.request_count(), 1);
    assert_eq!(m.stats().by_model["a"], 1);
    assert!(m.requests().is_empty());
}
