//! The worker as a library (how `switchyard up` embeds it): `start(Config)` in-process,
//! usage events through the sink with the upstream's token counts, graceful `shutdown`.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use serde_json::json;
use switchyard_mock::{Behavior, MockOptions, MockServer};
use switchyard_tests::{
    wait_for,
    worker::{backend, key, model, provider, snapshot, write_state},
};
use switchyard_worker::account::{ChannelSink, HealthEvent, HealthSink, Outcome};

#[derive(Debug, Default)]
struct Events(std::sync::Mutex<Vec<HealthEvent>>);

impl HealthSink for Events {
    fn record(&self, ev: HealthEvent) {
        self.0.lock().unwrap().push(ev);
    }
}

const KEY: &str = "sk-sy-lib-key-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_worker_reports_usage_events() -> Result<()> {
    let m = MockServer::start(MockOptions::default()).await?;
    let snap = snapshot(
        3,
        vec![
            provider("oa", "openai", &m.openai_base(), &[("k1", "s1")]),
            provider("an", "anthropic", &m.url(), &[("k2", "s2")]),
        ],
        vec![
            model("gpt", "round_robin", vec![backend("oa", "oa", "", 1, 0)]),
            model("claude", "round_robin", vec![backend("an", "an", "", 1, 0)]),
        ],
        vec![key("lib", KEY, &[])],
    );
    let dir = tempfile::tempdir()?;
    write_state(dir.path(), &snap)?;
    let (sink, mut rx) = ChannelSink::new(100);
    let mut cfg = switchyard_worker::Config::new("127.0.0.1:0".parse()?);
    cfg.state_dir = Some(dir.path().to_path_buf());
    cfg.usage_sink = Some(Arc::new(sink));
    let health = Arc::new(Events::default());
    cfg.health_sink = Some(health.clone());
    let running = switchyard_worker::start(cfg).await?;
    let base = format!("http://{}", running.http_addr());
    let c = reqwest::Client::new();
    for stream in [false, true] {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&json!({"model":"gpt","stream":stream,"messages":[]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        r.bytes().await?;
        let r = c
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", KEY)
            .json(&json!({"model":"claude","stream":stream,"max_tokens":5,"messages":[]}))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        r.bytes().await?;
    }
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await?
                .unwrap(),
        );
    }
    for e in &events {
        assert_eq!(e.outcome, Outcome::Ok, "{e:?}");
        assert_eq!(&*e.key_name, "lib");
        assert_eq!(e.status, 200);
        assert_eq!(
            (
                e.usage.prompt_tokens,
                e.usage.completion_tokens,
                e.usage.total_tokens
            ),
            (12, 48, 60),
            "{e:?}"
        );
        assert!(!e.request_id.is_empty());
    }
    assert_eq!(events.iter().filter(|e| e.stream).count(), 2);
    assert_eq!(
        events
            .iter()
            .filter(|e| &*e.provider == "an" && &*e.credential == "k2")
            .count(),
        2
    );
    // An upstream 401 ejects the credential once a probe confirms it: one health event,
    // with its target.
    m.set_default(Behavior {
        reject_credentials: vec!["s1".into()],
        ..Behavior::default()
    });
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model":"gpt","messages":[]}))
        .send()
        .await?;
    assert_eq!(r.status(), 502);
    let ev = wait_for(
        "the confirmed ejection's health event",
        Duration::from_secs(10),
        || {
            let health = health.clone();
            async move {
                let ev = health.0.lock().unwrap();
                Ok((!ev.is_empty()).then(|| ev.clone()))
            }
        },
    )
    .await?;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].target.kind, ev[0].target.provider.as_str()),
        ("credential", "oa")
    );
    assert_eq!(ev[0].target.credential, "k1");
    assert!(!ev[0].healthy);
    assert!(
        ev[0].reason.contains("401") && ev[0].reason.contains("probe"),
        "{:?}",
        ev[0]
    );
    running.shutdown().await;
    assert!(
        c.get(format!("{base}/ready")).send().await.is_err(),
        "listener closed after shutdown"
    );
    Ok(())
}
