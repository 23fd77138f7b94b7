//! Issue 16, response half of hole 2: the real `switchyard-worker` in front of a mock
//! upstream that serialises its JSON another way than serde_json's compact form (white
//! space everywhere, `usage` first, keys written with `\u` escapes), as many
//! OpenAI-compatible servers do. The usage chunk the worker asked for must not reach a
//! client that did not ask for it, no `usage` member may be left in its events, and the
//! tokens must be booked; a non-streamed answer over 256 KiB must be booked too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use switchyard_mock::{Behavior, JsonStyle, MockOptions, MockServer};
use switchyard_tests::{
    wait_for,
    worker::{backend, key, model, provider, snapshot, start_with_snapshot},
};

const KEY: &str = "sk-sy-hostile-usage-0123456789";

async fn setup() -> Result<(MockServer, switchyard_tests::Proc, tempfile::TempDir)> {
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
            &[("k1", "sk-upstream-1")],
        )],
        vec![model(
            "gpt-x",
            "round_robin",
            vec![backend("oa-b", "oa", "real-x", 1, 0)],
        )],
        vec![key("main", KEY, &[])],
    );
    let (w, dir) = start_with_snapshot(&snap, &[]).await?;
    Ok((m, w, dir))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The worker's `switchyard_tokens_total` for `gpt-x` and `ty` (`prompt`, `completion`).
async fn tokens(c: &reqwest::Client, base: &str, ty: &str) -> Result<u64> {
    let text = c.get(format!("{base}/metrics")).send().await?.text().await?;
    let prefix = format!("switchyard_tokens_total{{model=\"gpt-x\",type=\"{ty}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Wait until the worker booked `prompt` and `completion` tokens in all.
async fn booked(c: &reqwest::Client, ops: &str, prompt: u64, completion: u64) -> Result<()> {
    wait_for("tokens booked", Duration::from_secs(10), || async {
        let got = (
            tokens(c, ops, "prompt").await?,
            tokens(c, ops, "completion").await?,
        );
        if got == (prompt, completion) {
            Ok(Some(()))
        } else if got.0 > prompt || got.1 > completion {
            bail!("booked {got:?}, want ({prompt}, {completion})")
        } else {
            Ok(None)
        }
    })
    .await
}

/// The `data:` values of an SSE body, parsed (`[DONE]` as a string).
fn data_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.trim().into())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaced_and_reordered_streams_lose_the_injected_usage_and_are_booked() -> Result<()> {
    let (m, w, _dir) = setup().await?;
    let base = w.url("http");
    let c = client();
    let mut want = (0, 0);
    for style in [JsonStyle::Spaced, JsonStyle::Hostile] {
        m.set_default(Behavior {
            json_style: style,
            ..Behavior::default()
        });
        // What the upstream sends a client that did not ask for usage.
        let direct = c
            .post(format!("{}/chat/completions", m.openai_base()))
            .bearer_auth("s")
            .json(&json!({"model":"real-x","stream":true,"messages":[]}))
            .send()
            .await?
            .text()
            .await?;
        let body = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model":"gpt-x","stream":true,"messages":[]}))
            .send()
            .await?
            .text()
            .await?;
        let up = m.requests().pop().unwrap();
        assert_eq!(up.json().unwrap()["stream_options"]["include_usage"], true);
        let events = data_events(&body);
        for e in &events {
            if let Some(o) = e.as_object() {
                assert!(
                    !o.contains_key("usage"),
                    "{style:?}: a usage member reached the client: {body}"
                );
                assert!(
                    o["choices"].as_array().is_some_and(|c| !c.is_empty()),
                    "{style:?}: an event with empty choices reached the client: {body}"
                );
            }
        }
        // Everything else is what the upstream sends without usage (but the model name).
        let strip_model = |mut v: Value| {
            if let Some(o) = v.as_object_mut() {
                o.remove("model");
            }
            v
        };
        let got: Vec<Value> = events.into_iter().map(strip_model).collect();
        let direct: Vec<Value> = data_events(&direct).into_iter().map(strip_model).collect();
        assert_eq!(got, direct, "{style:?}");
        want = (want.0 + 12, want.1 + 48);
        booked(&c, &w.url("ops"), want.0, want.1).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streamed_answer_over_256_kib_is_booked() -> Result<()> {
    let (m, w, _dir) = setup().await?;
    let base = w.url("http");
    let c = client();
    let mut want = (0, 0);
    for style in [JsonStyle::Compact, JsonStyle::Hostile] {
        m.set_default(Behavior {
            json_style: style,
            reply: "long answer ".repeat(300 * 1024 / 12),
            ..Behavior::default()
        });
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model":"gpt-x","messages":[]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let body = r.bytes().await?;
        assert!(body.len() > 300 * 1024, "{}", body.len());
        let v: Value = serde_json::from_slice(&body)?;
        assert_eq!(v["usage"]["prompt_tokens"], 12, "{style:?}");
        want = (want.0 + 12, want.1 + 48);
        booked(&c, &w.url("ops"), want.0, want.1).await?;
    }
    Ok(())
}
