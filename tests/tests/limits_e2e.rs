//! Issue 18's limits, worker side, with real processes: control (SQLite), a worker and
//! the mock upstream. Limits are created through control's Admin API, leased to the
//! worker (`WorkerApi.Lease`) and decided in the worker.
//!
//! Windows are an hour long here (a minute in the cluster test), so that "the fleet is
//! out" (`Retry-After` = seconds to the window's end) stays apart from "this worker's
//! slice is out" (`Retry-After: 1`, a new slice is on its way): a client retries the
//! latter at once. A test that starts within a minute of the hour's end waits for it.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::time::Duration;

use anyhow::{bail, Result};
use control_common::*;
use reqwest::{header::HeaderMap, StatusCode};
use switchyard_mock::{Behavior, MockOptions, MockServer, Usage};
use switchyard_proto::v1 as pb;
use switchyard_tests::{
    wait_for,
    worker::{start_with_snapshot, start_worker},
    DbKind, Proc, TestDb,
};

const USAGE: Usage = Usage {
    prompt_tokens: 11,
    completion_tokens: 7,
    cached_tokens: 0,
    reasoning_tokens: 0,
    cache_write_tokens: 0,
};

struct Env {
    _db: TestDb,
    control: Proc,
    admin: Admin,
    mock: MockServer,
    worker: Option<(Proc, tempfile::TempDir)>,
    http: reqwest::Client,
}

fn limit(name: &str, scope: &str, kind: &str, window: &str, amount: u64) -> pb::Limit {
    pb::Limit {
        name: name.into(),
        scope: scope.into(),
        kind: kind.into(),
        window: window.into(),
        amount,
        ..Default::default()
    }
}

impl Env {
    /// Control with an OpenAI-kind provider `oa` and an Anthropic-kind one `an` on the
    /// mock, models `m` (openai, priced) and `c` (anthropic).
    async fn start() -> Result<Env> {
        wait_off_the_hours_end().await;
        let db = TestDb::new(DbKind::Sqlite).await?.unwrap();
        let control = spawn_control(&db, &[]).await?;
        let mut admin = admin(&control).await?;
        let mock = MockServer::start(MockOptions::default()).await?;
        mock.set_default(Behavior {
            usage: USAGE,
            ..Default::default()
        });
        let base = format!("http://{}/v1", mock.addr());
        admin
            .create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    health: Some(pb::HealthCheck {
                        enabled: Some(false),
                        ..Default::default()
                    }),
                    ..provider("oa", &base)
                }),
            })
            .await?;
        admin
            .create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    kind: "anthropic".into(),
                    health: Some(pb::HealthCheck {
                        enabled: Some(false),
                        ..Default::default()
                    }),
                    ..provider("an", &base)
                }),
            })
            .await?;
        for p in ["oa", "an"] {
            admin
                .create_credential(pb::CreateCredentialRequest {
                    credential: Some(credential(p, "k", "sk-upstream")),
                })
                .await?;
        }
        admin
            .create_model(pb::CreateModelRequest {
                model: Some(pb::Model {
                    // 1000 nano-units per input token, 2000 per output token.
                    price: Some(pb::Price {
                        input: Some(1_000),
                        output: Some(2_000),
                        ..Default::default()
                    }),
                    ..model("m")
                }),
            })
            .await?;
        admin
            .create_model(pb::CreateModelRequest {
                model: Some(model("c")),
            })
            .await?;
        admin
            .create_backend(pb::CreateBackendRequest {
                backend: Some(backend("m", "oa")),
            })
            .await?;
        admin
            .create_backend(pb::CreateBackendRequest {
                backend: Some(backend("c", "an")),
            })
            .await?;
        Ok(Env {
            _db: db,
            control,
            admin,
            mock,
            worker: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
        })
    }

    /// A new key (in `team`, if not empty): its plaintext.
    async fn key(&mut self, name: &str, team: &str) -> Result<String> {
        let r = self
            .admin
            .create_api_key(pb::CreateApiKeyRequest {
                name: name.into(),
                team: team.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(r.plaintext)
    }

    async fn limit(&mut self, l: pb::Limit) -> Result<()> {
        self.admin
            .create_limit(pb::CreateLimitRequest { limit: Some(l) })
            .await?;
        Ok(())
    }

    /// Start the worker once the config is in place, and wait until it serves the
    /// latest version.
    async fn start_worker(&mut self) -> Result<()> {
        self.start_worker_with(&[]).await
    }

    async fn start_worker_with(&mut self, args: &[&str]) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut all = vec!["--worker-token", WORKER_TOKEN];
        all.extend_from_slice(args);
        let w = start_worker(dir.path(), &self.control.url("grpc"), &all).await?;
        let want = version(&mut self.admin).await?;
        let url = w.url("ops");
        wait_for("the worker's config", Duration::from_secs(15), || {
            let url = url.clone();
            async move {
                let v = metric_at(&url, "switchyard_config_version").await?;
                Ok((v as u64 >= want).then_some(()))
            }
        })
        .await?;
        // Leased: every limit holds a grant (possibly of nothing yet).
        let names: Vec<String> = self
            .admin
            .list_limits(pb::ListLimitsRequest {})
            .await?
            .into_inner()
            .limits
            .into_iter()
            .filter_map(|s| s.limit.map(|l| l.name))
            .collect();
        for n in names {
            let series = format!(r#"switchyard_limit_granted{{limit="{n}"}}"#);
            let url = url.clone();
            wait_for("the worker's lease", Duration::from_secs(15), || {
                let (url, series) = (url.clone(), series.clone());
                async move { Ok((metric_at(&url, &series).await? == 1.0).then_some(())) }
            })
            .await?;
        }
        self.worker = Some((w, dir));
        Ok(())
    }

    fn url(&self) -> String {
        self.worker.as_ref().unwrap().0.url("http")
    }

    /// The worker's ops port, where `/metrics` is.
    fn ops(&self) -> String {
        self.worker.as_ref().unwrap().0.url("ops")
    }

    async fn metric(&self, series: &str) -> Result<f64> {
        metric_at(&self.ops(), series).await
    }

    /// A POST to the worker: status, headers, body.
    async fn post(&self, key: &str, path: &str, body: &str) -> Result<(StatusCode, HeaderMap, String)> {
        let r = self
            .http
            .post(format!("{}{path}", self.url()))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let (s, h) = (r.status(), r.headers().clone());
        Ok((s, h, r.text().await?))
    }

    /// Sends `body` until the fleet is out (a 429 whose `Retry-After` is more than 1 s),
    /// retrying a refusal of this worker's slice (`Retry-After: 1`) at once. Returns the
    /// answers admitted (their headers) and the final refusal.
    async fn until_fleet_out(
        &self,
        key: &str,
        path: &str,
        body: &str,
    ) -> Result<(Vec<HeaderMap>, (HeaderMap, String))> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut admitted = Vec::new();
        while tokio::time::Instant::now() < deadline {
            let (s, h, b) = self.post(key, path, body).await?;
            match s {
                StatusCode::OK => admitted.push(h),
                StatusCode::TOO_MANY_REQUESTS => {
                    let ra: u64 = header(&h, "retry-after").parse()?;
                    if ra > 1 {
                        return Ok((admitted, (h, b)));
                    }
                }
                s => bail!("unexpected {s}: {b}"),
            }
        }
        let text = reqwest::get(format!("{}/metrics", self.ops()))
            .await?
            .text()
            .await?;
        let state: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("switchyard_limit_"))
            .collect();
        bail!(
            "the fleet was never out; admitted {}; the worker's limits: {state:#?}",
            admitted.len()
        )
    }
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The value of the `/metrics` sample whose line starts with `series ` (0 when absent).
async fn metric_at(base: &str, series: &str) -> Result<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// An hour's window ends within a minute: wait for the next one (the tests' counts are
/// for one window).
async fn wait_off_the_hours_end() {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let left = 3_600_000 - ms % 3_600_000;
    if left < 60_000 {
        tokio::time::sleep(Duration::from_millis(left + 100)).await;
    }
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const MESSAGES: &str = r#"{"model":"c","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

/// Requests per window, enforced: exactly the amount is admitted, each answer's
/// remaining-quota headers count down to 0 (OpenAI's on Chat, Anthropic's on Messages,
/// replacing the mock's own), then 429 in the client's dialect with `Retry-After` until
/// the hour's end and the headers still there. A key without limits gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_enforced_exactly_with_headers() -> Result<()> {
    let mut env = Env::start().await?;
    let oa = env.key("oa-key", "").await?;
    let an = env.key("an-key", "").await?;
    let free = env.key("free", "").await?;
    env.limit(limit("oa-rph", "key:oa-key", "requests", "hour", 7))
        .await?;
    env.limit(limit("an-rph", "key:an-key", "requests", "hour", 5))
        .await?;
    env.start_worker().await?;

    let (admitted, (h, body)) = env.until_fleet_out(&oa, "/v1/chat/completions", CHAT).await?;
    assert_eq!(admitted.len(), 7);
    let remaining: Vec<&str> = admitted
        .iter()
        .map(|h| header(h, "x-ratelimit-remaining-requests"))
        .collect();
    assert_eq!(remaining, ["6", "5", "4", "3", "2", "1", "0"]);
    for h in &admitted {
        assert_eq!(header(h, "x-ratelimit-limit-requests"), "7");
        assert!(header(h, "x-ratelimit-reset-requests").ends_with('s'), "{h:?}");
        // The key has no tokens limit: no tokens trio.
        assert!(h.get("x-ratelimit-limit-tokens").is_none());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests per hour"),
        "{body}"
    );
    assert!(header(&h, "retry-after").parse::<u64>()? > 1);
    assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "0");
    // The fleet's refusal, and this worker's slice's (retried at once) before it.
    assert!(
        env.metric(r#"switchyard_limit_refusals_total{limit="oa-rph"}"#)
            .await?
            >= 1.0
    );

    let (admitted, (h, body)) = env.until_fleet_out(&an, "/v1/messages", MESSAGES).await?;
    assert_eq!(admitted.len(), 5);
    let remaining: Vec<&str> = admitted
        .iter()
        .map(|h| header(h, "anthropic-ratelimit-requests-remaining"))
        .collect();
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    assert_eq!(header(&admitted[0], "anthropic-ratelimit-requests-limit"), "5");
    assert!(header(&admitted[0], "anthropic-ratelimit-requests-reset").ends_with(":00:00Z"));
    assert!(admitted[0].get("x-ratelimit-limit-requests").is_none());
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{body}");
    assert!(header(&h, "retry-after").parse::<u64>()? > 1);

    let (s, h, _) = env.post(&free, "/v1/chat/completions", CHAT).await?;
    assert_eq!(s, StatusCode::OK);
    assert!(h.get("x-ratelimit-limit-requests").is_none() && h.get("retry-after").is_none());
    Ok(())
}

/// An observe limit never refuses, and counts what it would have refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_counts_and_never_refuses() -> Result<()> {
    let mut env = Env::start().await?;
    let k = env.key("watched", "").await?;
    env.limit(pb::Limit {
        mode: "observe".into(),
        ..limit("obs", "key:watched", "requests", "hour", 2)
    })
    .await?;
    env.start_worker().await?;
    for _ in 0..6 {
        let (s, _, b) = env.post(&k, "/v1/chat/completions", CHAT).await?;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert_eq!(env.metric(r#"switchyard_limit_used{limit="obs"}"#).await?, 6.0);
    assert!(
        env.metric(r#"switchyard_limit_observed_over_total{limit="obs"}"#)
            .await?
            >= 4.0
    );
    assert_eq!(
        env.metric(r#"switchyard_limit_refusals_total{limit="obs"}"#)
            .await?,
        0.0
    );
    Ok(())
}

/// A team's limit counts every key of the team together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_limit_is_shared_by_its_keys() -> Result<()> {
    let mut env = Env::start().await?;
    let a = env.key("red-a", "red").await?;
    let b = env.key("red-b", "red").await?;
    let other = env.key("blue-a", "blue").await?;
    env.limit(limit("red-rph", "team:red", "requests", "hour", 6))
        .await?;
    env.start_worker().await?;
    let mut admitted = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the team was never out");
        let key = if i % 2 == 0 { &a } else { &b };
        i += 1;
        let (s, h, body) = env.post(key, "/v1/chat/completions", CHAT).await?;
        match s {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS if header(&h, "retry-after") == "1" => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(body.contains("this key's team"), "{body}");
                break;
            }
            s => bail!("unexpected {s}: {body}"),
        }
    }
    assert_eq!(admitted, 6);
    // Both keys are out now; a key of another team is not.
    for k in [&a, &b] {
        let (s, h, _) = env.post(k, "/v1/chat/completions", CHAT).await?;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&h, "x-ratelimit-remaining-requests"), "0");
    }
    assert_eq!(
        env.post(&other, "/v1/chat/completions", CHAT).await?.0,
        StatusCode::OK
    );
    // The usage records carry the key's team: control groups them by it (refusals too).
    let red_posts = i + 2;
    let admin = env.admin.clone();
    wait_for("usage by team", Duration::from_secs(15), || {
        let mut admin = admin.clone();
        async move {
            let rows = admin
                .query_usage(pb::QueryUsageRequest {
                    group_by: "team".into(),
                    ..Default::default()
                })
                .await?
                .into_inner()
                .rows;
            let n = |t: &str| rows.iter().find(|r| r.group == t).map_or(0, |r| r.requests);
            Ok((n("red") == red_posts && n("blue") == 1).then_some(()))
        }
    })
    .await?;
    Ok(())
}

/// Tokens: each request reserves an estimate (body bytes / 4 + `max_tokens`) and settles
/// with the real usage (11 + 7 tokens from the mock): the worker's count is the real
/// tokens of the admitted requests, not the estimates, and the remaining-tokens header
/// follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_settle_with_the_real_usage() -> Result<()> {
    let mut env = Env::start().await?;
    let k = env.key("tok", "").await?;
    env.limit(limit("tok-tph", "key:tok", "tokens", "hour", 2_000))
        .await?;
    env.start_worker().await?;
    let body = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut last = HeaderMap::new();
    for _ in 0..10 {
        last = wait_for("an admitted request", Duration::from_secs(10), || async {
            let (s, h, b) = env.post(&k, "/v1/chat/completions", body).await?;
            match s {
                StatusCode::OK => Ok(Some(h)),
                StatusCode::TOO_MANY_REQUESTS if header(&h, "retry-after") == "1" => Ok(None),
                s => bail!("unexpected {s}: {b}"),
            }
        })
        .await?;
    }
    let used = env.metric(r#"switchyard_limit_used{limit="tok-tph"}"#).await? as u64;
    assert_eq!(used, 10 * 18, "the real tokens, not the estimates");
    assert_eq!(header(&last, "x-ratelimit-limit-tokens"), "2000");
    // Control's count may still hold an estimate it saw reserved: never above the truth.
    let remaining: u64 = header(&last, "x-ratelimit-remaining-tokens").parse()?;
    assert!(
        remaining <= 2_000 - used + 18,
        "{remaining} remaining, {used} used"
    );
    assert!(
        remaining >= 2_000 - used - 2 * 30,
        "{remaining} remaining, {used} used"
    );
    Ok(())
}

/// Spend: reserved as one nano-unit, settled with the cost priced by the snapshot
/// (11 × 1000 + 7 × 2000 = 25,000 nano-units a request): a 100,000 budget admits 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_settled_with_the_cost() -> Result<()> {
    let mut env = Env::start().await?;
    let k = env.key("spender", "").await?;
    env.limit(limit("budget", "key:spender", "spend", "hour", 100_000))
        .await?;
    env.start_worker().await?;
    let (admitted, (_, body)) = env.until_fleet_out(&k, "/v1/chat/completions", CHAT).await?;
    assert_eq!(admitted.len(), 4, "{body}");
    assert!(body.contains("spend per hour"), "{body}");
    assert_eq!(
        env.metric(r#"switchyard_limit_used{limit="budget"}"#).await?,
        100_000.0
    );
    Ok(())
}

/// Concurrency under parallel streams: never more streams admitted at once than the
/// limit, the others refused; a slot comes back when its stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_holds_under_parallel_streams() -> Result<()> {
    let mut env = Env::start().await?;
    let k = env.key("streamer", "").await?;
    env.limit(limit("two-at-once", "key:streamer", "concurrency", "", 2))
        .await?;
    env.start_worker().await?;
    // Get a grant first (a short request), then slow streams: 6 chunks, 300 ms apart.
    env.until_slot(&k).await?;
    env.mock.set_default(Behavior {
        usage: USAGE,
        stream_chunks: 6,
        chunk_delay_ms: 300,
        ..Default::default()
    });
    let stream = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut heads = Vec::new();
    for _ in 0..6 {
        let r = env
            .http
            .post(format!("{}/v1/chat/completions", env.url()))
            .bearer_auth(&k)
            .body(stream)
            .send();
        heads.push(r);
    }
    let answers = futures::future::join_all(heads).await;
    let mut open = Vec::new();
    let mut refused = 0;
    for a in answers {
        let a = a?;
        match a.status() {
            StatusCode::OK => open.push(a),
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            s => bail!("unexpected {s}"),
        }
    }
    assert!(
        !open.is_empty() && open.len() <= 2,
        "{} streams admitted at once",
        open.len()
    );
    assert_eq!(open.len() + refused, 6);
    assert!(
        env.metric(r#"switchyard_limit_used{limit="two-at-once"}"#)
            .await?
            <= 2.0
    );
    for a in open {
        a.text().await?;
    }
    env.mock.set_default(Behavior {
        usage: USAGE,
        ..Default::default()
    });
    wait_for("the slots to come back", Duration::from_secs(10), || async {
        let v = env
            .metric(r#"switchyard_limit_used{limit="two-at-once"}"#)
            .await?;
        Ok((v == 0.0).then_some(()))
    })
    .await?;
    env.until_slot(&k).await?;
    Ok(())
}

/// Limits with room to spare refuse nothing: a worker holding no slice yet (new, or idle
/// for the key: it keeps none, not to hoard the fleet's quota) admits its first request
/// and then a burst of parallel ones, each refused only for the worker's spent slice
/// waiting for the grant its refusal asked for (`--limit-wait`; generous here, as a loaded
/// test machine may take a while to answer a lease). No refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_to_spare_refuses_nothing() -> Result<()> {
    let mut env = Env::start().await?;
    let k = env.key("roomy", "").await?;
    env.limit(limit("roomy-rph", "key:roomy", "requests", "hour", 1_000_000))
        .await?;
    env.limit(limit("roomy-conc", "key:roomy", "concurrency", "", 10_000))
        .await?;
    env.limit(limit("m-tph", "model:m", "tokens", "hour", 1_000_000_000))
        .await?;
    env.start_worker_with(&["--limit-wait", "10s"]).await?;
    let (s, _, b) = env.post(&k, "/v1/chat/completions", CHAT).await?;
    assert_eq!(s, StatusCode::OK, "the first request: {b}");
    let burst = (0..40).map(|_| env.post(&k, "/v1/chat/completions", CHAT));
    for r in futures::future::join_all(burst).await {
        let (s, _, b) = r?;
        assert_eq!(s, StatusCode::OK, "a burst of 40: {b}");
    }
    for l in ["roomy-rph", "roomy-conc", "m-tph"] {
        let series = format!(r#"switchyard_limit_refusals_total{{limit="{l}"}}"#);
        assert_eq!(env.metric(&series).await?, 0.0, "{l}");
    }
    assert_eq!(
        env.metric(r#"switchyard_limit_used{limit="roomy-rph"}"#).await?,
        41.0
    );
    // Nor does the fleet's count (`limits list`): once a claim reports the 41 requests,
    // the same claim reports no refusal.
    let admin = env.admin.clone();
    let fleet = wait_for("a claim with the 41 requests", Duration::from_secs(15), || {
        let mut admin = admin.clone();
        async move {
            let all = admin
                .list_limits(pb::ListLimitsRequest {})
                .await?
                .into_inner()
                .limits;
            let rph = all
                .iter()
                .find(|s| s.limit.as_ref().is_some_and(|l| l.name == "roomy-rph"));
            Ok(rph.is_some_and(|s| s.used >= 41).then_some(all))
        }
    })
    .await?;
    for s in fleet {
        assert_eq!(s.refused, 0, "{s:?}");
    }
    Ok(())
}

impl Env {
    /// Retries refusals of this worker's slice until a request is admitted.
    async fn until_slot(&self, key: &str) -> Result<()> {
        wait_for("an admitted request", Duration::from_secs(10), || async {
            let (s, _, b) = self.post(key, "/v1/chat/completions", CHAT).await?;
            match s {
                StatusCode::OK => Ok(Some(())),
                StatusCode::TOO_MANY_REQUESTS => Ok(None),
                s => bail!("unexpected {s}: {b}"),
            }
        })
        .await
    }
}

/// Control killed: a worker spends what it holds, then each limit follows `on_outage`:
/// `open` admits (and counts), `closed` refuses with `Retry-After` once its grant expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_open_admits_closed_refuses() -> Result<()> {
    let mut env = Env::start().await?;
    let open = env.key("opener", "").await?;
    let closed = env.key("closer", "").await?;
    env.limit(pb::Limit {
        on_outage: "open".into(),
        ..limit("open-rph", "key:opener", "requests", "hour", 1_000)
    })
    .await?;
    env.limit(limit("closed-rph", "key:closer", "requests", "hour", 1_000))
        .await?;
    env.start_worker().await?;
    env.until_slot(&open).await?;
    env.until_slot(&closed).await?;
    env.control.signal("KILL").await?;
    // Closed: admitted while the grant lasts, then refused for the outage.
    let refusal = wait_for("the closed limit to refuse", Duration::from_secs(30), || async {
        let (s, h, b) = env.post(&closed, "/v1/chat/completions", CHAT).await?;
        match s {
            StatusCode::OK => Ok(None),
            StatusCode::TOO_MANY_REQUESTS if header(&h, "retry-after") != "1" => Ok(Some((h, b))),
            StatusCode::TOO_MANY_REQUESTS => Ok(None),
            s => bail!("unexpected {s}: {b}"),
        }
    })
    .await?;
    assert_eq!(header(&refusal.0, "retry-after"), "5", "{}", refusal.1);
    // Its grant has expired (it was leased at the same time): open admits, and counts.
    let before = env.metric(r#"switchyard_limit_used{limit="open-rph"}"#).await?;
    for _ in 0..5 {
        let (s, _, b) = env.post(&open, "/v1/chat/completions", CHAT).await?;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert_eq!(
        env.metric(r#"switchyard_limit_used{limit="open-rph"}"#).await?,
        before + 5.0
    );
    let (s, _, _) = env.post(&closed, "/v1/chat/completions", CHAT).await?;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    Ok(())
}

/// A worker that never reached control (its snapshot from the state file) holds no
/// grant: an `open` limit admits everything and counts it, a `closed` one refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_control_open_admits_and_closed_refuses() -> Result<()> {
    use switchyard_tests::worker::{backend, key, model, provider, snapshot};
    wait_off_the_hours_end().await;
    let mock = MockServer::start(MockOptions::default()).await?;
    let base = format!("http://{}/v1", mock.addr());
    let mut snap = snapshot(
        1,
        vec![provider("p", "openai", &base, &[("c", "sk-up")])],
        vec![model(
            "m",
            "round_robin",
            vec![backend("b", "p", "mock-model", 1, 0)],
        )],
        vec![
            key("open", "sk-open-0123456789abcdef", &[]),
            key("closed", "sk-closed-0123456789abcd", &[]),
        ],
    );
    snap.limits = vec![
        pb::Limit {
            on_outage: "open".into(),
            ..limit("open-rpm", "key:open", "requests", "hour", 2)
        },
        limit("closed-rpm", "key:closed", "requests", "hour", 50),
    ];
    let (w, _dir) = start_with_snapshot(&snap, &[]).await?;
    let http = reqwest::Client::new();
    let post = |key: &'static str| {
        http.post(format!("{}/v1/chat/completions", w.url("http")))
            .bearer_auth(key)
            .body(CHAT)
            .send()
    };
    for _ in 0..4 {
        let r = post("sk-open-0123456789abcdef").await?;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = post("sk-closed-0123456789abcd").await?;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(r.headers(), "retry-after"), "5");
    assert_eq!(header(r.headers(), "x-ratelimit-limit-requests"), "50");
    let base = w.url("ops");
    assert_eq!(
        metric_at(&base, r#"switchyard_limit_used{limit="open-rpm"}"#).await?,
        4.0
    );
    assert_eq!(
        metric_at(&base, r#"switchyard_limit_observed_over_total{limit="open-rpm"}"#).await?,
        0.0
    );
    assert_eq!(
        metric_at(&base, r#"switchyard_limit_refusals_total{limit="closed-rpm"}"#).await?,
        1.0
    );
    Ok(())
}
