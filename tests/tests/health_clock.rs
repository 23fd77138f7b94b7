//! `GET /health` gives every time on one clock, wall-clock Unix milliseconds (issue 21):
//! the breaker and cool-down deadlines, kept on the monotonic clock inside the worker,
//! are converted, so they compare with `last_check_ms` and with the time of day.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde_json::{json, Value};
use switchyard_mock::{Behavior, MockOptions, MockServer};
use switchyard_tests::{
    wait_for,
    worker::{backend, key, model, provider, snapshot, start_with_snapshot},
};

const KEY: &str = "sk-sy-health-clock-key-0123456789";

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_deadlines_are_wall_clock() -> Result<()> {
    let sick = MockServer::start(MockOptions::default()).await?;
    let limited = MockServer::start(MockOptions::default()).await?;
    sick.set_default(Behavior::error(500));
    limited.set_default(Behavior::rate_limited(60));
    let snap = snapshot(
        1,
        vec![
            provider("sick", "openai", &sick.openai_base(), &[("k", "s1")]),
            provider("limited", "openai", &limited.openai_base(), &[("k", "s2")]),
        ],
        vec![
            model("m", "round_robin", vec![backend("sick", "sick", "", 1, 0)]),
            model("r", "round_robin", vec![backend("limited", "limited", "", 1, 0)]),
        ],
        vec![key("main", KEY, &[])],
    );
    let (w, _dir) = start_with_snapshot(&snap, &["--ejection-time", "60s", "--eject-after", "1"]).await?;
    let base = w.url("http");
    let c = reqwest::Client::new();
    let before = wall_ms();
    for m in ["m", "r"] {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model": m, "messages": []}))
            .send()
            .await?;
        assert!(!r.status().is_success());
    }
    let h: Value = wait_for(
        "the backend ejected and the credential cooling down",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            let ops = w.url("ops");
            async move {
                let h: Value = c.get(format!("{ops}/health")).send().await?.json().await?;
                let ejected = !h["models"]["m"]["backends"][0]["ejected_until_ms"].is_null();
                let cooling =
                    h["providers"].as_array().unwrap().iter().any(|p| {
                        p["name"] == "limited" && !p["credentials"][0]["cooldown_until_ms"].is_null()
                    });
                Ok((ejected && cooling).then_some(h))
            }
        },
    )
    .await?;
    let after = wall_ms();
    let ejected = h["models"]["m"]["backends"][0]["ejected_until_ms"]
        .as_u64()
        .unwrap();
    // Ejected for about 60 s from when it failed: a wall-clock time a minute ahead (a
    // monotonic reading would be the host's uptime, nowhere near).
    assert!(
        ejected >= before + 50_000 && ejected <= after + 70_000,
        "ejected_until_ms {ejected} is not ~60 s after {before}..{after}: {h}"
    );
    let limited = h["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limited")
        .unwrap();
    let cooldown = limited["credentials"][0]["cooldown_until_ms"].as_u64().unwrap();
    assert!(
        cooldown >= before + 50_000 && cooldown <= after + 70_000,
        "cooldown_until_ms {cooldown} is not ~60 s after {before}..{after}: {h}"
    );
    Ok(())
}
