//! Control side of reporting, on SQLite and Postgres: QueryUsage sums and groups what
//! Report stored (once, however often a batch is resent), computes p50/p95, and keeps the
//! sums after the retention task rolled old records into hourly aggregates; GetHealth and
//! HealthHistory read the health events. Also the bench figure for report throughput.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::time::{Duration, Instant};

use control_common::*;
use switchyard_proto::v1 as pb;
use switchyard_tests::{store_test, wait_for, TestDb};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[allow(clippy::too_many_arguments)]
fn rec(
    key: &str,
    model: &str,
    worker: &str,
    ts_ms: i64,
    status: u32,
    outcome: &str,
    latency_ms: u64,
    p: u64,
) -> pb::UsageRecord {
    pb::UsageRecord {
        team: Default::default(),
        id: uuid::Uuid::now_v7().to_string(),
        ts_ms,
        request_id: "r".into(),
        worker_id: worker.into(),
        key_id: format!("id-{key}"),
        key_name: key.into(),
        model: model.into(),
        backend: format!("{model}-b"),
        provider: "prov".into(),
        credential: "cred".into(),
        endpoint: "/v1/chat/completions".into(),
        status,
        stream: false,
        retries: 1,
        latency_us: latency_ms * 1000,
        ttfb_us: 1000,
        prompt_tokens: p,
        completion_tokens: 2 * p,
        total_tokens: 3 * p,
        cached_tokens: 1,
        reasoning_tokens: 0,
        outcome: outcome.into(),
        cache_write_tokens: 2,
        // Key b's backend has no price: its records are unpriced, not free.
        cost_nano: (key != "b").then_some(p * 1000 + 7),
    }
}

/// The UTC date (`YYYY-MM-DD`) of `ms`.
fn day(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339(t).to_string()[..10].to_string()
}

fn row<'a>(rows: &'a [pb::UsageRow], g: &str) -> &'a pb::UsageRow {
    rows.iter()
        .find(|r| r.group == g)
        .unwrap_or_else(|| panic!("no row {g} in {rows:?}"))
}

store_test!(usage_sums_groups_percentiles_rollup, |db: TestDb| async move {
    // Short retention so the roll-up runs every second in the test.
    let p = spawn_control(&db, &[("SWITCHYARD_USAGE_RETENTION", "20s")]).await?;
    let mut a = admin(&p).await?;
    let mut w = worker_with(&p, Some(WORKER_TOKEN)).await?;
    let now = now_ms();
    let mut usage = Vec::new();
    // key a: 100 requests on model m1, latencies 1..=100 ms, 3 of them errors.
    for i in 1..=100u64 {
        let (status, outcome) = match i {
            10 => (500, "upstream_error"),
            20 => (200, "client_aborted"),
            30 => (429, "upstream_error"),
            _ => (200, "ok"),
        };
        usage.push(rec("a", "m1", "w1", now - 1000, status, outcome, i, 10));
    }
    // key b: 5 requests on m2 from w2.
    for _ in 0..5 {
        usage.push(rec("b", "m2", "w2", now - 1000, 200, "ok", 7, 4));
    }
    // key a, three hours ago: rolled up by the retention task.
    for _ in 0..4 {
        usage.push(rec("a", "m1", "w1", now - 3 * 3_600_000, 200, "ok", 50, 1));
    }
    let batch = pb::ReportRequest {
        worker_id: "w1".into(),
        batch_id: "b1".into(),
        usage,
        health: vec![],
    };
    let r = w.report(batch.clone()).await?.into_inner();
    assert_eq!((r.usage_stored, r.usage_duplicates), (109, 0));
    // Resent (a lost ack): stored once.
    let r = w.report(batch.clone()).await?.into_inner();
    assert_eq!(r.usage_stored, 0);

    let q = |group_by: &str, key: &str| pb::QueryUsageRequest {
        team: Default::default(),
        from_ms: 0,
        to_ms: 0,
        group_by: group_by.into(),
        key_name: key.into(),
        model: String::new(),
    };
    let by_key = a.query_usage(q("key", "")).await?.into_inner().rows;
    assert_eq!(by_key.len(), 2, "{by_key:?}");
    let ra = row(&by_key, "a");
    assert_eq!(ra.requests, 104);
    assert_eq!(ra.errors, 3);
    assert_eq!(ra.prompt_tokens, 100 * 10 + 4);
    assert_eq!(ra.completion_tokens, 2 * (100 * 10 + 4));
    assert_eq!(ra.total_tokens, 3 * (100 * 10 + 4));
    assert_eq!(ra.cached_tokens, 104);
    assert_eq!(ra.retries, 104);
    assert_eq!(ra.cache_write_tokens, 208);
    assert_eq!(
        (ra.cost_nano, ra.unpriced_requests),
        (100 * 10_007 + 4 * 1_007, 0)
    );
    let rb = row(&by_key, "b");
    assert_eq!((rb.requests, rb.errors, rb.prompt_tokens), (5, 0, 20));
    assert_eq!((rb.cost_nano, rb.unpriced_requests), (0, 5));
    // By UTC day: the dates of the records, the same sums.
    let by_day = a.query_usage(q("day", "")).await?.into_inner().rows;
    let mut want: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (ts, n, cost) in [
        (now - 1000, 105, 100 * 10_007),
        (now - 3 * 3_600_000, 4, 4 * 1_007),
    ] {
        let e = want.entry(day(ts)).or_default();
        e.0 += n;
        e.1 += cost;
    }
    let got: std::collections::BTreeMap<String, (u64, u64)> = by_day
        .iter()
        .map(|r| (r.group.clone(), (r.requests, r.cost_nano)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(rb.p50_latency_ms, 7.0);

    // Filters, other groupings, time range.
    let only_b = a.query_usage(q("none", "b")).await?.into_inner().rows;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].requests, 5);
    let by_worker = a.query_usage(q("worker", "")).await?.into_inner().rows;
    assert_eq!(row(&by_worker, "w2").requests, 5);
    let by_model = a
        .query_usage(pb::QueryUsageRequest {
            model: "m2".into(),
            ..q("model", "")
        })
        .await?
        .into_inner()
        .rows;
    assert_eq!(by_model.len(), 1);
    assert_eq!(row(&by_model, "m2").requests, 5);
    let recent = a
        .query_usage(pb::QueryUsageRequest {
            from_ms: now - 60_000,
            ..q("key", "a")
        })
        .await?
        .into_inner()
        .rows;
    assert_eq!(row(&recent, "a").requests, 100);
    assert_eq!(row(&recent, "a").p50_latency_ms, 50.0);
    assert_eq!(row(&recent, "a").p95_latency_ms, 95.0);
    assert!(a.query_usage(q("secret", "")).await.is_err());

    // The roll-up moves the 4 old records into usage_hourly; the sums do not change.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await?;
    wait_for("old records rolled up", Duration::from_secs(15), || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(&pool)
            .await?;
        Ok((n == 105).then_some(()))
    })
    .await?;
    let hourly: i64 = sqlx::query_scalar("SELECT CAST(SUM(requests) AS BIGINT) FROM usage_hourly")
        .fetch_one(&pool)
        .await?;
    assert_eq!(hourly, 4);
    let after = a.query_usage(q("key", "")).await?.into_inner().rows;
    assert_eq!(row(&after, "a").requests, 104);
    assert_eq!(row(&after, "a").prompt_tokens, 1004);
    assert_eq!(row(&after, "a").errors, 3);
    assert_eq!(row(&after, "a").cost_nano, 100 * 10_007 + 4 * 1_007);
    assert_eq!(row(&after, "a").cache_write_tokens, 208);
    assert_eq!(row(&after, "b").unpriced_requests, 5);
    let by_day_after = a.query_usage(q("day", "")).await?.into_inner().rows;
    let got_after: std::collections::BTreeMap<String, (u64, u64)> = by_day_after
        .iter()
        .map(|r| (r.group.clone(), (r.requests, r.cost_nano)))
        .collect();
    assert_eq!(got_after, want);
    // Resent after the roll-up: still all duplicates, sums unchanged.
    let r = w.report(batch.clone()).await?.into_inner();
    assert_eq!((r.usage_stored, r.usage_duplicates), (0, 109));
    let again = a.query_usage(q("key", "")).await?.into_inner().rows;
    assert_eq!(row(&again, "a").requests, 104);
    pool.close().await;

    // Bench note: report throughput (rows/s committed) on this store.
    let t = Instant::now();
    let mut rows = 0u64;
    for i in 0..20 {
        let usage: Vec<_> = (0..500)
            .map(|_| rec("bench", "m1", "w9", now, 200, "ok", 5, 1))
            .collect();
        rows += usage.len() as u64;
        w.report(pb::ReportRequest {
            worker_id: "w9".into(),
            batch_id: format!("bench-{i}"),
            usage,
            health: vec![],
        })
        .await?;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "BENCH report throughput ({:?}): {rows} rows in {secs:.2}s = {:.0} rows/s",
        db.kind,
        rows as f64 / secs
    );
    Ok(())
});

#[allow(clippy::too_many_arguments)]
fn ev(
    worker: &str,
    kind: &str,
    model: &str,
    backend: &str,
    provider: &str,
    cred: &str,
    healthy: bool,
    ts: i64,
    reason: &str,
) -> pb::HealthEvent {
    pb::HealthEvent {
        id: uuid::Uuid::now_v7().to_string(),
        ts_ms: ts,
        worker_id: worker.into(),
        kind: kind.into(),
        model: model.into(),
        backend: backend.into(),
        provider: provider.into(),
        credential: cred.into(),
        healthy,
        reason: reason.into(),
    }
}

store_test!(health_state_and_history, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let mut w = worker_with(&p, Some(WORKER_TOKEN)).await?;
    let t = now_ms() - 10_000;
    let health = vec![
        ev(
            "w1",
            "backend",
            "m1",
            "b1",
            "p1",
            "",
            false,
            t,
            "probe failed: 503",
        ),
        ev(
            "w2",
            "backend",
            "m1",
            "b1",
            "p1",
            "",
            false,
            t + 1,
            "probe failed: 503",
        ),
        ev("w1", "backend", "m1", "b1", "p1", "", true, t + 2, "recovered"),
        ev(
            "w1",
            "credential",
            "",
            "",
            "p1",
            "c1",
            false,
            t + 3,
            "upstream 401",
        ),
        ev(
            "w1",
            "backend",
            "m2",
            "b2",
            "p2",
            "",
            false,
            t + 4,
            "5 consecutive failures",
        ),
    ];
    let r = w
        .report(pb::ReportRequest {
            worker_id: "w1".into(),
            batch_id: "h1".into(),
            usage: vec![],
            health,
        })
        .await?
        .into_inner();
    assert_eq!(r.health_stored, 5);

    // No worker is connected: the reporting workers' latest events decide.
    let targets = a
        .get_health(pb::GetHealthRequest { model: String::new() })
        .await?
        .into_inner()
        .targets;
    let b1 = targets.iter().find(|t| t.backend == "b1").unwrap();
    assert_eq!((b1.healthy_workers, b1.total_workers), (1, 2), "{b1:?}");
    assert_eq!(b1.last_reason, "recovered");
    assert_eq!(b1.last_change_ms, t + 2);
    let c1 = targets.iter().find(|t| t.credential == "c1").unwrap();
    assert_eq!(
        (c1.kind.as_str(), c1.healthy_workers, c1.total_workers),
        ("credential", 0, 1)
    );
    let only_m1 = a
        .get_health(pb::GetHealthRequest { model: "m1".into() })
        .await?
        .into_inner()
        .targets;
    assert!(only_m1.iter().all(|t| t.backend != "b2"), "{only_m1:?}");

    let hist = a
        .health_history(pb::HealthHistoryRequest {
            backend: "m1/b1".into(),
            limit: 2,
        })
        .await?
        .into_inner()
        .events;
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[0].reason, "recovered"); // newest first
    assert_eq!(hist[1].worker_id, "w2");
    let by_provider = a
        .health_history(pb::HealthHistoryRequest {
            backend: "p1".into(),
            limit: 0,
        })
        .await?
        .into_inner()
        .events;
    assert_eq!(by_provider.len(), 4);
    Ok(())
});

store_test!(
    report_counts_duplicates_in_large_reports,
    |db: TestDb| async move {
        let p = spawn_control(&db, &[]).await?;
        let mut w = worker_with(&p, Some(WORKER_TOKEN)).await?;
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&db.url).await?;
        let stored = || async {
            let (n, tokens): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT) FROM usage_records",
        )
        .fetch_one(&pool)
        .await?;
            anyhow::Ok((n, tokens))
        };
        let now = now_ms();
        let with_id = |id: String, tokens: u64| pb::UsageRecord {
            id,
            total_tokens: tokens,
            ..rec("k", "m1", "", now, 200, "ok", 5, 1)
        };

        // 1,037 records (ten full statements and a remainder of 37), 1,000 distinct ids: the
        // last 37 repeat ids of the first statement, and u500 comes twice in a row. The first
        // of each id is stored (tokens 1), the later ones (tokens 1000) are duplicates.
        let mut usage: Vec<_> = (0..1000).map(|i| with_id(format!("u{i}"), 1)).collect();
        usage.insert(501, with_id("u500".into(), 1000));
        usage.extend((0..36).map(|i| with_id(format!("u{i}"), 1000)));
        assert_eq!(usage.len(), 1037);
        let batch = |usage: Vec<pb::UsageRecord>, health: Vec<pb::HealthEvent>| pb::ReportRequest {
            worker_id: "w1".into(),
            batch_id: "big".into(),
            usage,
            health,
        };
        let health: Vec<_> = (0..250)
            .map(|i| pb::HealthEvent {
                id: format!("h{}", i % 200),
                ts_ms: now,
                kind: "backend".into(),
                model: "m1".into(),
                backend: "b1".into(),
                healthy: i % 2 == 0,
                ..Default::default()
            })
            .collect();
        let r = w.report(batch(usage.clone(), health.clone())).await?.into_inner();
        assert_eq!(
            (
                r.usage_stored,
                r.usage_duplicates,
                r.health_stored,
                r.health_duplicates
            ),
            (1000, 37, 200, 50)
        );
        assert_eq!(stored().await?, (1000, 1000));
        let worker: String = sqlx::query_scalar("SELECT worker_id FROM usage_records WHERE id = 'u7'")
            .fetch_one(&pool)
            .await?;
        assert_eq!(worker, "w1", "an empty worker_id takes the report's");

        // Resent: every record a duplicate.
        let r = w.report(batch(usage, health)).await?.into_inner();
        assert_eq!(
            (
                r.usage_stored,
                r.usage_duplicates,
                r.health_stored,
                r.health_duplicates
            ),
            (0, 1037, 0, 250)
        );

        // New ids mixed with stored ones and with ids already rolled up (usage_rolled_ids).
        sqlx::query("INSERT INTO usage_rolled_ids (id, rolled_at_ms) VALUES ('gone1', 1), ('gone2', 1)")
            .execute(&pool)
            .await?;
        let mixed: Vec<_> = (995..1150)
            .map(|i| with_id(format!("u{i}"), 1))
            .chain(["gone1", "gone2", "u1200", "gone1"].map(|id| with_id(id.into(), 1)))
            .collect();
        let r = w.report(batch(mixed, vec![])).await?.into_inner();
        assert_eq!((r.usage_stored, r.usage_duplicates), (151, 8));
        assert_eq!(stored().await?, (1151, 1151));

        // An empty id anywhere fails the whole report; nothing of it is stored.
        for (usage, health) in [
            (
                (0..300)
                    .map(|i| with_id(if i == 250 { String::new() } else { format!("x{i}") }, 1))
                    .collect::<Vec<_>>(),
                vec![],
            ),
            (
                (0..300).map(|i| with_id(format!("y{i}"), 1)).collect(),
                vec![pb::HealthEvent::default()],
            ),
        ] {
            let e = w.report(batch(usage, health)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        }
        assert_eq!(stored().await?, (1151, 1151));
        pool.close().await;
        Ok(())
    }
);
