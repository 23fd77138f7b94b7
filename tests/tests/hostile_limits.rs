//! Hostile clients against the real worker binary: every wait is bounded (request body
//! deadline and minimum rate, send timeout) and every request settles (a client that hangs
//! up is booked as `client_aborted`, and the in-flight gauge returns to zero).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::Result;
use switchyard_mock::{Behavior, MockOptions, MockServer, Usage};
use switchyard_proto as pb;
use switchyard_tests::{
    wait_for,
    worker::{backend, key, model, provider, snapshot, start_with_snapshot},
    Proc,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const KEY: &str = "sk-sy-test-key-0123456789";

async fn mock_with(b: Behavior) -> MockServer {
    let m = MockServer::start(MockOptions {
        name: "up".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    m.set_default(b);
    m
}

/// Model `m` on the mock, in both dialects.
fn snap(m: &MockServer) -> pb::Snapshot {
    snapshot(
        1,
        vec![
            provider("oa", "openai", &m.openai_base(), &[("k", "s")]),
            provider("an", "anthropic", &m.url(), &[("k", "s")]),
        ],
        vec![model(
            "m",
            "round_robin",
            vec![backend("oa", "oa", "", 1, 0), backend("an", "an", "", 1, 0)],
        )],
        vec![key("main", KEY, &[])],
    )
}

/// A chat request's head (and, when `body` is given, its whole body) as raw bytes.
fn chat_request(id: &str, body: &str, content_length: usize) -> Vec<u8> {
    request("/v1/chat/completions", id, body, content_length)
}

fn request(path: &str, id: &str, body: &str, content_length: usize) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\nx-request-id: {id}\r\ncontent-length: {content_length}\r\n\r\n{body}"
    )
    .into_bytes()
}

fn stream_body() -> String {
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_string()
}

/// The value of the `/metrics` sample whose line starts with `series ` (0 when absent).
async fn metric(w: &Proc, series: &str) -> Result<f64> {
    let text = reqwest::get(format!("{}/metrics", w.url("ops")))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// The worker's access line for request `id`, once written.
fn access_line(w: &Proc, id: &str) -> Option<String> {
    let needle = format!(" request_id={id} ");
    w.stderr_log
        .lines()
        .into_iter()
        .find(|l| l.contains("request done") && l.contains(&needle))
}

/// Waits until request `id` is booked and nothing is in flight; returns its access line.
async fn settled(w: &Proc, id: &str, deadline: Duration) -> Result<String> {
    wait_for(
        &format!("request {id} booked, in-flight gauge at 0"),
        deadline,
        || async {
            let line = access_line(w, id);
            let inflight = metric(w, "switchyard_inflight_requests").await?;
            Ok(line.filter(|_| inflight == 0.0))
        },
    )
    .await
}

/// Reads the worker's answer on `s` until it closes, writing `trickle` every 100 ms
/// meanwhile when given. Fails after `deadline`; returns how long it took and the answer.
async fn answer_until_close(
    s: &mut TcpStream,
    deadline: Duration,
    trickle: Option<&[u8]>,
) -> Result<(Duration, String)> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        anyhow::ensure!(
            t0.elapsed() < deadline,
            "no answer and no close within {deadline:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok((t0.elapsed(), String::from_utf8_lossy(&got).into_owned())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => if let Some(t) = trickle {
                // A write that fails means the worker closed: the read then says so.
                let _ = s.write_all(t).await;
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_trickled_body_gets_408_and_the_connection_closes() -> Result<()> {
    let m = mock_with(Behavior::default()).await;
    let body = r#"{"model":"m","messages":[]}"#;

    // Headers and part of the body, then nothing: cut at the body deadline.
    let (w, _d) = start_with_snapshot(&snap(&m), &["--body-timeout", "1s"]).await?;
    let mut s = TcpStream::connect(w.addr("http")).await?;
    let mut req = chat_request("stalled", "", 100);
    req.extend_from_slice(&body.as_bytes()[..10]);
    s.write_all(&req).await?;
    let (took, answer) = answer_until_close(&mut s, Duration::from_secs(10), None).await?;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    assert!(answer.contains(r#""type":"invalid_request_error""#), "{answer}");
    assert!(took >= Duration::from_millis(900), "answered after {took:?}");
    let line = settled(&w, "stalled", Duration::from_secs(5)).await?;
    assert!(line.contains(" status=408 "), "{line}");
    assert_eq!(m.request_count(), 0);

    // A body trickled at 50 B/s, under a minimum of 1000 B/s enforced after 1 s.
    let (w, _d) =
        start_with_snapshot(&snap(&m), &["--body-min-rate", "1000", "--body-rate-grace", "1s"]).await?;
    let mut s = TcpStream::connect(w.addr("http")).await?;
    s.write_all(&chat_request("trickled", "", 100_000)).await?;
    let (took, answer) = answer_until_close(&mut s, Duration::from_secs(10), Some(b"     ")).await?;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took >= Duration::from_millis(900), "answered after {took:?}");

    // A body that comes whole at once is not affected.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", w.url("http")))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_the_upstream_answers_is_booked_client_aborted() -> Result<()> {
    let m = mock_with(Behavior {
        latency_ms: 20_000,
        ..Behavior::default()
    })
    .await;
    let (w, _d) = start_with_snapshot(&snap(&m), &[]).await?;
    let mut s = TcpStream::connect(w.addr("http")).await?;
    let body = r#"{"model":"m","messages":[]}"#;
    s.write_all(&chat_request("hangup", body, body.len())).await?;
    wait_for(
        "the request to reach the upstream",
        Duration::from_secs(10),
        || async { Ok((m.request_count() == 1).then_some(())) },
    )
    .await?;
    assert_eq!(metric(&w, "switchyard_inflight_requests").await?, 1.0);
    drop(s);

    // Well before the upstream would answer (20 s).
    let line = settled(&w, "hangup", Duration::from_secs(10)).await?;
    assert!(line.contains(" outcome=client_aborted"), "{line}");
    assert!(line.contains(" status=499 "), "{line}");
    assert!(line.contains(" model=m "), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() -> Result<()> {
    // 12 MiB of stream, far more than the socket buffers between the worker and a client
    // that reads nothing (the worker's send buffer grows to 4 MiB at most).
    let m = mock_with(Behavior {
        stream_chunks: 192,
        reply: "x".repeat(12 << 20),
        ..Behavior::default()
    })
    .await;
    let (w, _d) = start_with_snapshot(&snap(&m), &["--send-timeout", "1s"]).await?;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let mut s = sock.connect(w.addr("http")).await?;
    let body = stream_body();
    s.write_all(&chat_request("unread", &body, body.len())).await?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await?;
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    // The client reads nothing more: once the worker's writes have been pending for the
    // send timeout, it closes the connection and books the request. (When exactly is
    // `server`'s unit tests' business: on a loaded machine this task may be scheduled
    // late, so a lower bound measured here would not say much.)
    let line = settled(&w, "unread", Duration::from_secs(15)).await?;
    assert!(line.contains(" outcome=client_aborted"), "{line}");
    assert!(line.contains(" status=200 "), "{line}");

    // What was in the socket buffers is there; then the connection is closed.
    let mut total = n;
    let t1 = Instant::now();
    loop {
        anyhow::ensure!(
            t1.elapsed() < Duration::from_secs(20),
            "still open after {total} bytes"
        );
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => total += k,
        }
    }
    assert!(total < 12 << 20, "the whole stream went out: {total} bytes");
    Ok(())
}

/// Starts a stream (`/v1/chat/completions`, or `/v1/messages` when `anthropic`), reads
/// its head and first event, and hangs up; returns once the worker booked it, with its
/// access line.
async fn read_first_event_and_hang_up(w: &Proc, id: &str, anthropic: bool) -> Result<String> {
    let mut s = TcpStream::connect(w.addr("http")).await?;
    let body = stream_body();
    let path = if anthropic {
        "/v1/messages"
    } else {
        "/v1/chat/completions"
    };
    s.write_all(&request(path, id, &body, body.len())).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|x| x == b"data: ") {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before the first event");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    settled(w, id, Duration::from_secs(15)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_stream_is_drained_for_its_usage_and_booked_client_aborted() -> Result<()> {
    // The usage comes in the stream's last event, 1.5 s after the first.
    let m = mock_with(Behavior {
        stream_chunks: 5,
        chunk_delay_ms: 300,
        usage: Usage {
            prompt_tokens: 7,
            completion_tokens: 11,
            ..Usage::default()
        },
        ..Behavior::default()
    })
    .await;
    let prompt = r#"switchyard_tokens_total{model="m",type="prompt"}"#;
    let completion = r#"switchyard_tokens_total{model="m",type="completion"}"#;

    // Default: the worker reads on (up to 10 s / 1 MiB) and books the upstream's count.
    let (w, _d) = start_with_snapshot(&snap(&m), &[]).await?;
    let line = read_first_event_and_hang_up(&w, "drained", false).await?;
    assert!(line.contains(" outcome=client_aborted"), "{line}");
    assert!(line.contains(" stream=true"), "{line}");
    assert!(line.contains(" status=200 "), "{line}");
    assert_eq!(metric(&w, prompt).await?, 7.0);
    assert_eq!(metric(&w, completion).await?, 11.0);

    // `--abort-drain 0`: what was seen when the client left is booked. An Anthropic
    // stream's first event (`message_start`) carries the input tokens and one output token;
    // the final count (11) comes in `message_delta` at the end.
    let (w, _d) = start_with_snapshot(&snap(&m), &["--abort-drain", "0"]).await?;
    let line = read_first_event_and_hang_up(&w, "not-drained", true).await?;
    assert!(line.contains(" outcome=client_aborted"), "{line}");
    assert!(line.contains(" backend=an "), "{line}");
    assert_eq!(metric(&w, prompt).await?, 7.0);
    assert_eq!(metric(&w, completion).await?, 1.0);
    Ok(())
}
