//! The real worker in front of a hostile upstream: a raw TCP server in the test that
//! answers with framings a well-behaved provider never sends (issue 16, hole 7). What
//! the client receives is checked: a body never cut short by a relayed length, an error
//! in the client's own dialect for a framing the worker refuses, headers named in the
//! upstream's `connection` header never relayed, and a refused connection never reused.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use serde_json::{json, Value};
use switchyard_tests::{
    wait_for,
    worker::{backend, key, model, provider, snapshot, start_with_snapshot},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const KEY: &str = "sk-sy-test-key-0123456789";

/// A JSON chat completion, long enough that a cut is obvious.
const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"the whole answer, not a prefix of it"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}"#;

fn chunked(body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len())
}

/// The answer to a request for upstream model `name`.
fn answer(name: &str) -> String {
    let json = "content-type: application/json\r\n";
    match name {
        // Both framings: the length (5) would cut the body if it were relayed.
        "te-and-cl" | "an-te-and-cl" => format!(
            "HTTP/1.1 200 OK\r\n{json}transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n{}",
            chunked(COMPLETION)
        ),
        "te-gzip" => format!(
            "HTTP/1.1 200 OK\r\n{json}transfer-encoding: gzip, chunked\r\n\r\n{}",
            chunked(COMPLETION)
        ),
        "two-lengths" => format!(
            "HTTP/1.1 200 OK\r\n{json}content-length: {}\r\ncontent-length: 5\r\n\r\n{COMPLETION}",
            COMPLETION.len()
        ),
        "plus-length" => format!(
            "HTTP/1.1 200 OK\r\n{json}content-length: +{}\r\n\r\n{COMPLETION}",
            COMPLETION.len()
        ),
        "huge-chunk" => format!("HTTP/1.1 200 OK\r\n{json}transfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc"),
        // We never ask for an upgrade.
        "switching" => "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".into(),
        // `x-foo` before the `connection` header that names it, `x-bar` after.
        "nominates" => format!(
            "HTTP/1.1 200 OK\r\n{json}x-foo: internal\r\nx-kept: yes\r\nconnection: x-foo, keep-alive\r\ncontent-length: {}\r\nX-Bar: internal\r\nConnection: X-Bar\r\n\r\n{COMPLETION}",
            COMPLETION.len()
        ),
        "interim-then-chunked" => format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 200 OK\r\n{json}transfer-encoding: chunked\r\n\r\n{}",
            chunked(COMPLETION)
        ),
        _ => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".into(),
    }
}

/// What the raw upstream saw: per upstream model, the connections its requests came on
/// (`conn` ids), and which connections the worker closed.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, usize)>,
    closed: Vec<usize>,
}

async fn raw_upstream() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(serve(s, conn, s2.clone()));
        }
    });
    (addr, seen)
}

async fn serve(mut s: TcpStream, conn: usize, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    loop {
        let Some(body) = read_request(&mut s, &mut buf).await else {
            seen.lock().unwrap().closed.push(conn);
            return;
        };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        let name = v["model"].as_str().unwrap_or_default().to_string();
        seen.lock().unwrap().requests.push((name.clone(), conn));
        if s.write_all(answer(&name).as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One request's body (read by its `content-length`); `None` when the peer closed.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Some(body);
            }
        }
        let mut b = [0u8; 4096];
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

const SCENARIOS: &[&str] = &[
    "te-and-cl",
    "te-gzip",
    "two-lengths",
    "plus-length",
    "huge-chunk",
    "switching",
    "nominates",
    "interim-then-chunked",
];

async fn worker(up: SocketAddr) -> Result<(switchyard_tests::Proc, tempfile::TempDir)> {
    let mut models: Vec<_> = SCENARIOS
        .iter()
        .map(|s| model(s, "round_robin", vec![backend(&format!("b-{s}"), "raw", s, 1, 0)]))
        .collect();
    models.push(model(
        "an-te-and-cl",
        "round_robin",
        vec![backend("b-an", "raw-an", "an-te-and-cl", 1, 0)],
    ));
    let snap = snapshot(
        1,
        vec![
            provider("raw", "openai", &format!("http://{up}/v1"), &[("k1", "sk-up-1")]),
            provider(
                "raw-an",
                "anthropic",
                &format!("http://{up}"),
                &[("k1", "sk-up-2")],
            ),
        ],
        models,
        vec![key("main", KEY, &[])],
    );
    start_with_snapshot(&snap, &[]).await
}

async fn chat(c: &reqwest::Client, base: &str, model: &str) -> (u16, HashMap<String, String>, String) {
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    // A failure after the head was held back can end the connection without an answer.
    let r = match r {
        Ok(r) => r,
        Err(e) => return (0, HashMap::new(), format!("<send error: {e}>")),
    };
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    // A body cut short by a relayed length shows as an error here or as a short text.
    let text = r.text().await.unwrap_or_else(|e| format!("<body error: {e}>"));
    (status, headers, text)
}

fn assert_openai_bad_gateway(model: &str, status: u16, text: &str) {
    assert_eq!(status, 502, "{model}: {text}");
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("{model}: not JSON: {text}"));
    assert!(v["error"]["message"].is_string(), "{model}: {v}");
    assert!(v["error"]["type"].is_string(), "{model}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_framings_are_refused_or_relayed_whole() -> Result<()> {
    let (up, seen) = raw_upstream().await;
    let (w, _dir) = worker(up).await?;
    let base = w.url("http");
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;

    // Framings the worker refuses: a 502 in the OpenAI dialect, never a cut body.
    for m in ["te-and-cl", "te-gzip", "two-lengths", "plus-length", "switching"] {
        let (status, _, text) = chat(&c, &base, m).await;
        assert_openai_bad_gateway(m, status, &text);
    }

    // A chunk size past u64: refused before any byte, not wrapped into a small size.
    let (status, _, text) = chat(&c, &base, "huge-chunk").await;
    // FIXME: the worker ends the client's connection without an answer when the body's
    // first read fails after a 200 head (a 502 would be kinder); either way no byte of
    // the bogus body gets through.
    assert!(
        status == 502 || text.starts_with("<body error") || text.starts_with("<send error"),
        "huge-chunk: {status} {text}"
    );
    assert!(!text.contains("abc"), "huge-chunk: {text}");

    // Interim answers are skipped and a chunked body arrives whole.
    let (status, _, text) = chat(&c, &base, "interim-then-chunked").await;
    assert_eq!((status, text.as_str()), (200, COMPLETION));

    // Headers the upstream's `connection` names are not relayed, wherever they stand.
    let (status, h, text) = chat(&c, &base, "nominates").await;
    assert_eq!((status, text.as_str()), (200, COMPLETION));
    assert_eq!(h.get("x-kept").map(String::as_str), Some("yes"));
    assert!(!h.contains_key("x-foo"), "{h:?}");
    assert!(!h.contains_key("x-bar"), "{h:?}");

    // The Anthropic dialect gets its own error shape for a refused framing.
    let r = c
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "an-te-and-cl", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await?;
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");

    // A refused answer's connection is closed by the worker, never pooled: the same
    // request again arrives on a new connection, and the old one was closed.
    let (status, _, text) = chat(&c, &base, "switching").await;
    assert_openai_bad_gateway("switching", status, &text);
    let (status, _, text) = chat(&c, &base, "te-and-cl").await;
    assert_openai_bad_gateway("te-and-cl", status, &text);
    let conns = |m: &str| -> Vec<usize> {
        let s = seen.lock().unwrap();
        s.requests
            .iter()
            .filter(|(n, _)| n == m)
            .map(|(_, c)| *c)
            .collect()
    };
    for m in ["switching", "te-and-cl"] {
        let cs = conns(m);
        assert_eq!(cs.len(), 2, "{m}: {cs:?}");
        assert_ne!(cs[0], cs[1], "{m}: a refused connection was reused");
        wait_for(
            &format!("{m}: the worker closes the refused connections"),
            Duration::from_secs(10),
            || {
                let closed = seen.lock().unwrap().closed.clone();
                let cs = cs.clone();
                async move { Ok(cs.iter().all(|c| closed.contains(c)).then_some(())) }
            },
        )
        .await?;
    }
    Ok(())
}
