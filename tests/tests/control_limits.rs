//! Limits and teams on the control plane, over real gRPC against the real binary, on
//! SQLite and Postgres: CRUD and validation (the status names the field), Apply/Export
//! with limits, snapshots carrying limits and key teams, usage by team, and the Lease
//! allocator driven as two fake worker instances, across a control restart.
#![allow(clippy::unwrap_used)]

mod control_common;

use std::time::Duration;

use control_common::*;
use switchyard_proto::v1 as pb;
use switchyard_tests::{store_test, wait_for, TestDb};
use tonic::Code;

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

async fn create_key(a: &mut Admin, name: &str, team: &str) -> anyhow::Result<pb::ApiKey> {
    Ok(a.create_api_key(pb::CreateApiKeyRequest {
        name: name.into(),
        team: team.into(),
        ..Default::default()
    })
    .await?
    .into_inner()
    .key
    .unwrap())
}

async fn list(a: &mut Admin) -> anyhow::Result<Vec<pb::LimitStatus>> {
    Ok(a.list_limits(pb::ListLimitsRequest {}).await?.into_inner().limits)
}

store_test!(limits_crud_and_validation, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let alice = create_key(&mut a, "alice", "research").await?;
    assert_eq!(alice.team, "research");
    assert_status(
        a.create_api_key(pb::CreateApiKeyRequest {
            name: "bob".into(),
            team: "Not A Name".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["key bob: team"],
    );

    let v0 = version(&mut a).await?;
    let created = a
        .create_limit(pb::CreateLimitRequest {
            limit: Some(limit("alice-rpm", "key:alice", "requests", "minute", 100)),
        })
        .await?
        .into_inner();
    // Defaults are filled in.
    assert_eq!(
        (created.mode.as_str(), created.on_outage.as_str()),
        ("enforce", "closed")
    );
    assert!(created.created_at_ms > 0);
    assert_eq!(version(&mut a).await?, v0 + 1, "a limit is config");
    // A team scope needs no key yet; concurrency has no window.
    a.create_limit(pb::CreateLimitRequest {
        limit: Some(limit("ops-conc", "team:ops", "concurrency", "", 8)),
    })
    .await?;

    // Validation names the field.
    let bad = |f: &dyn Fn(&mut pb::Limit)| {
        let mut l = limit("x", "key:alice", "tokens", "day", 10);
        f(&mut l);
        pb::CreateLimitRequest { limit: Some(l) }
    };
    for (req, needles) in [
        (
            bad(&|l| l.scope = "key:nobody".into()),
            &["limit.scope", "nobody", "does not exist"][..],
        ),
        (bad(&|l| l.scope = "model:nope".into()), &["limit.scope", "model"]),
        (
            bad(&|l| l.scope = "credential:p/c".into()),
            &["limit.scope", "credential p/c"],
        ),
        (bad(&|l| l.scope = "user:x".into()), &["limit.scope", "key:NAME"]),
        (bad(&|l| l.kind = "bytes".into()), &["limit.kind", "bytes"]),
        (bad(&|l| l.window = "week".into()), &["limit.window", "week"]),
        (bad(&|l| l.window = String::new()), &["limit.window is required"]),
        (
            bad(&|l| {
                l.kind = "concurrency".into();
            }),
            &["limit.window", "concurrency"],
        ),
        (bad(&|l| l.amount = 0), &["limit.amount"]),
        (bad(&|l| l.mode = "warn".into()), &["limit.mode", "warn"]),
        (bad(&|l| l.on_outage = "maybe".into()), &["limit.on_outage"]),
        (bad(&|l| l.name = "Bad".into()), &["limit.name"]),
    ] {
        assert_status(a.create_limit(req).await, Code::InvalidArgument, needles);
    }
    assert_status(
        a.create_limit(pb::CreateLimitRequest {
            limit: Some(limit("alice-rpm", "key:alice", "requests", "minute", 5)),
        })
        .await,
        Code::AlreadyExists,
        &["limit alice-rpm"],
    );
    assert_status(
        a.create_limit(pb::CreateLimitRequest { limit: None }).await,
        Code::InvalidArgument,
        &["limit is required"],
    );
    assert_eq!(version(&mut a).await?, v0 + 2, "failed writes change nothing");

    // Update by mask: only the named fields change.
    let u = a
        .update_limit(pb::UpdateLimitRequest {
            limit: Some(pb::Limit {
                name: "alice-rpm".into(),
                amount: 250,
                mode: "observe".into(),
                ..Default::default()
            }),
            update_mask: vec!["amount".into()],
        })
        .await?
        .into_inner();
    assert_eq!(
        (u.amount, u.mode.as_str(), u.window.as_str()),
        (250, "enforce", "minute")
    );
    assert_status(
        a.update_limit(pb::UpdateLimitRequest {
            limit: Some(pb::Limit {
                name: "alice-rpm".into(),
                window: "fortnight".into(),
                ..Default::default()
            }),
            update_mask: vec!["window".into()],
        })
        .await,
        Code::InvalidArgument,
        &["limit.window"],
    );
    assert_status(
        a.update_limit(pb::UpdateLimitRequest {
            limit: Some(pb::Limit {
                name: "alice-rpm".into(),
                ..Default::default()
            }),
            update_mask: vec!["created_at_ms".into()],
        })
        .await,
        Code::InvalidArgument,
        &["update_mask", "created_at_ms"],
    );
    assert_status(
        a.update_limit(pb::UpdateLimitRequest {
            limit: Some(pb::Limit {
                name: "ghost".into(),
                ..Default::default()
            }),
            update_mask: vec!["amount".into()],
        })
        .await,
        Code::NotFound,
        &["limit ghost"],
    );

    // A key that a limit names cannot go while the limit stays.
    assert_status(
        a.delete_api_key(pb::DeleteApiKeyRequest { name: "alice".into() })
            .await,
        Code::InvalidArgument,
        &["limit alice-rpm", "key:alice"],
    );

    // List: every limit, with its current window.
    let ls = list(&mut a).await?;
    assert_eq!(ls.len(), 2);
    let rpm = ls
        .iter()
        .find(|s| s.limit.as_ref().unwrap().name == "alice-rpm")
        .unwrap();
    assert_eq!(rpm.window_end_ms - rpm.window_start_ms, 60_000);
    assert_eq!((rpm.used, rpm.leased, rpm.workers), (0, 0, 0));
    let conc = ls
        .iter()
        .find(|s| s.limit.as_ref().unwrap().name == "ops-conc")
        .unwrap();
    assert_eq!((conc.window_start_ms, conc.window_end_ms), (0, 0));

    // Snapshots carry the limits and the keys' teams.
    let v = version(&mut a).await?;
    let mut w = Watcher::connect(&p, "w1", 0).await?;
    let s = w.next_at(v).await?;
    assert_eq!(s.limits.len(), 2);
    assert_eq!(
        s.keys.iter().find(|k| k.name == "alice").unwrap().team,
        "research"
    );
    let hash_before = s.hash.clone();

    a.delete_limit(pb::DeleteLimitRequest {
        name: "alice-rpm".into(),
    })
    .await?;
    assert_status(
        a.delete_limit(pb::DeleteLimitRequest {
            name: "alice-rpm".into(),
        })
        .await,
        Code::NotFound,
        &["limit alice-rpm"],
    );
    let s = w.next_at(version(&mut a).await?).await?;
    assert_eq!(s.limits.len(), 1);
    assert_ne!(s.hash, hash_before, "the hash covers the limits");

    // A key's team moves with update_mask `team`.
    let k = a
        .update_api_key(pb::UpdateApiKeyRequest {
            key: Some(pb::ApiKey {
                name: "alice".into(),
                team: "platform".into(),
                ..Default::default()
            }),
            update_mask: vec!["team".into()],
        })
        .await?
        .into_inner();
    assert_eq!(k.team, "platform");
    Ok(())
});

store_test!(apply_and_export_carry_limits, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let doc = pb::ConfigDocument {
        keys: vec![pb::ApiKey {
            name: "alice".into(),
            team: "research".into(),
            ..Default::default()
        }],
        limits: vec![
            limit("alice-tpm", "key:alice", "tokens", "minute", 50_000),
            pb::Limit {
                mode: "observe".into(),
                on_outage: "open".into(),
                ..limit(
                    "research-spend",
                    "team:research",
                    "spend",
                    "month",
                    25_000_000_000,
                )
            },
        ],
        ..Default::default()
    };
    let apply = |doc: pb::ConfigDocument, dry_run: bool, prune: bool| pb::ApplyRequest {
        document: Some(doc),
        dry_run,
        prune,
    };
    let dry = a.apply(apply(doc.clone(), true, false)).await?.into_inner();
    let kinds: Vec<_> = dry
        .changes
        .iter()
        .map(|c| (c.kind.as_str(), c.name.as_str()))
        .collect();
    assert!(kinds.contains(&("limit", "alice-tpm")), "{kinds:?}");
    assert!(list(&mut a).await?.is_empty(), "dry run writes nothing");
    a.apply(apply(doc.clone(), false, false)).await?;
    let exported = a
        .export(pb::ExportRequest::default())
        .await?
        .into_inner()
        .document
        .unwrap();
    assert_eq!(exported.limits.len(), 2);
    assert_eq!(exported.keys[0].team, "research");
    let spend = exported
        .limits
        .iter()
        .find(|l| l.name == "research-spend")
        .unwrap();
    assert_eq!(
        (spend.amount, spend.mode.as_str(), spend.on_outage.as_str()),
        (25_000_000_000, "observe", "open")
    );
    // Exported, re-applied: no change.
    let again = a.apply(apply(exported.clone(), false, false)).await?.into_inner();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    // A change shows its fields.
    let mut changed = exported.clone();
    changed.limits[0].amount = 60_000;
    let r = a.apply(apply(changed.clone(), false, false)).await?.into_inner();
    assert_eq!(r.changes.len(), 1);
    assert_eq!(
        (
            r.changes[0].kind.as_str(),
            r.changes[0].action.as_str(),
            r.changes[0].fields.clone()
        ),
        ("limit", "update", vec!["amount".to_string()])
    );
    // Errors name the document's entry.
    let mut bad = changed.clone();
    bad.limits[1].scope = "key:nobody".into();
    assert_status(
        a.apply(apply(bad, false, false)).await,
        Code::InvalidArgument,
        &["limits[1].scope", "nobody"],
    );
    let mut bad = changed.clone();
    bad.limits[0].window = "fortnight".into();
    assert_status(
        a.apply(apply(bad, false, false)).await,
        Code::InvalidArgument,
        &["limits[0].window"],
    );
    let mut bad = changed.clone();
    bad.limits.push(bad.limits[0].clone());
    assert_status(
        a.apply(apply(bad, false, false)).await,
        Code::InvalidArgument,
        &["limits[2].name", "more than once"],
    );
    // Prune drops a limit the document no longer names.
    let mut fewer = changed.clone();
    fewer.limits.truncate(1);
    let r = a.apply(apply(fewer, false, true)).await?.into_inner();
    assert!(r
        .changes
        .iter()
        .any(|c| c.kind == "limit" && c.name == "research-spend" && c.action == "delete"));
    assert_eq!(list(&mut a).await?.len(), 1);
    Ok(())
});

fn claim(limit: &str, window_start_ms: i64, used: u64, ceiling: u64, want: u64) -> pb::LeaseClaim {
    pb::LeaseClaim {
        limit: limit.into(),
        window_start_ms,
        used,
        ceiling,
        want,
        refused: 0,
    }
}

async fn lease(
    w: &mut Worker,
    instance: &str,
    claims: Vec<pb::LeaseClaim>,
) -> anyhow::Result<pb::LeaseResponse> {
    Ok(w.lease(pb::LeaseRequest {
        worker_id: format!("worker-{instance}"),
        instance_id: instance.into(),
        claims,
    })
    .await?
    .into_inner())
}

store_test!(
    a_restart_of_control_loses_no_consumption,
    |db: TestDb| async move {
        let mut p = spawn_control(&db, &[]).await?;
        let mut a = admin(&p).await?;
        create_key(&mut a, "alice", "research").await?;
        a.create_limit(pb::CreateLimitRequest {
            limit: Some(limit("research-day", "team:research", "requests", "day", 1000)),
        })
        .await?;
        // The lease path reads the published snapshot: wait until it has the limit.
        let v = version(&mut a).await?;
        Watcher::connect(&p, "probe", 0).await?.next_at(v).await?;

        // Unauthenticated leases are refused, like reports.
        let mut anon = worker_with(&p, None).await?;
        let e = anon
            .lease(pb::LeaseRequest {
                worker_id: "x".into(),
                instance_id: "i".into(),
                claims: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);

        let mut w = worker_with(&p, Some(WORKER_TOKEN)).await?;
        let assert_invalid = |r: Result<tonic::Response<pb::LeaseResponse>, tonic::Status>, field: &str| {
            assert_status(r, Code::InvalidArgument, &[field]);
        };
        assert_invalid(
            w.lease(pb::LeaseRequest {
                worker_id: "w".into(),
                instance_id: String::new(),
                claims: vec![],
            })
            .await,
            "instance_id",
        );

        // First claims: nothing used yet. Alone, an instance gets what it wants of what
        // remains; once another contends, at most half of what remains.
        let first = lease(&mut w, "i1", vec![claim("research-day", 0, 0, 0, 500)]).await?;
        let g1 = &first.grants[0];
        let day = g1.window_start_ms;
        assert_eq!(day % 86_400_000, 0, "a day window starts at 00:00 UTC");
        assert_eq!(g1.ceiling, 500, "its want, alone");
        assert!(g1.expires_at_ms > day);
        let g2 = lease(&mut w, "i2", vec![claim("research-day", day, 0, 0, 10_000)])
            .await?
            .grants[0]
            .clone();
        assert_eq!(g2.ceiling, 250, "half of what i1 left");
        // Unknown limits get no grant.
        let none = lease(&mut w, "i2", vec![claim("nope", day, 0, 0, 1)]).await?;
        assert!(none.grants.is_empty());

        // They spend, and claim again: absolute values, so a replay is harmless.
        lease(&mut w, "i1", vec![claim("research-day", day, 400, 500, 100)]).await?;
        let r = lease(&mut w, "i2", vec![claim("research-day", day, 200, 250, 100)]).await?;
        assert_eq!(r.grants[0].fleet_used, 600);
        let r = lease(&mut w, "i2", vec![claim("research-day", day, 200, 250, 100)]).await?;
        assert_eq!(r.grants[0].fleet_used, 600, "a replayed claim counts once");
        let s = list(&mut a).await?;
        assert_eq!(s[0].used, 600);
        assert_eq!(s[0].workers, 2);
        assert!(s[0].leased > 0 && s[0].used + s[0].leased <= 1000, "{:?}", s[0]);

        // SIGTERM: the ledger task writes what is pending before the pool closes.
        let status = p.terminate(Duration::from_secs(15)).await?;
        assert!(status.success(), "exit status {status:?}");
        let p2 = spawn_control(&db, &[]).await?;
        let mut a2 = admin(&p2).await?;
        let s = list(&mut a2).await?;
        assert_eq!(s[0].used, 600, "consumption survives the restart");
        assert_eq!(s[0].window_start_ms, day);
        // The leases granted before the restart still count until they expire: a third
        // instance cannot be given what i1 and i2 may still spend.
        let mut w2 = worker_with(&p2, Some(WORKER_TOKEN)).await?;
        let v = version(&mut a2).await?;
        Watcher::connect(&p2, "probe", 0).await?.next_at(v).await?;
        let g3 = lease(&mut w2, "i3", vec![claim("research-day", day, 0, 0, 10_000)])
            .await?
            .grants[0]
            .clone();
        assert_eq!(g3.fleet_used, 600);
        assert!(g3.ceiling <= 1000 - 600, "{g3:?}");
        // Once the old leases expire, the fleet's consumption is all that stays.
        wait_for("old leases expire", Duration::from_secs(15), || {
            let mut a2 = a2.clone();
            async move {
                let s = list(&mut a2).await?;
                let l = s
                    .iter()
                    .find(|s| s.limit.as_ref().unwrap().name == "research-day")
                    .unwrap();
                Ok((l.workers <= 1).then_some(()))
            }
        })
        .await?;
        assert_eq!(list(&mut a2).await?[0].used, 600);
        Ok(())
    }
);

store_test!(usage_groups_and_filters_by_team, |db: TestDb| async move {
    let p = spawn_control(&db, &[]).await?;
    let mut a = admin(&p).await?;
    let mut w = worker_with(&p, Some(WORKER_TOKEN)).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let rec = |id: &str, key: &str, team: &str, tokens: u64| pb::UsageRecord {
        id: id.into(),
        ts_ms: now,
        key_name: key.into(),
        team: team.into(),
        model: "m".into(),
        status: 200,
        outcome: "ok".into(),
        prompt_tokens: tokens,
        total_tokens: tokens,
        cost_nano: Some(tokens * 1000),
        ..Default::default()
    };
    w.report(pb::ReportRequest {
        worker_id: "w".into(),
        usage: vec![
            rec("1", "alice", "research", 10),
            rec("2", "bob", "research", 20),
            rec("3", "carol", "ops", 40),
            rec("4", "dave", "", 80),
        ],
        health: vec![],
        ..Default::default()
    })
    .await?;
    let q = |group_by: &str, team: &str| pb::QueryUsageRequest {
        group_by: group_by.into(),
        team: team.into(),
        ..Default::default()
    };
    let rows = a.query_usage(q("team", "")).await?.into_inner().rows;
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.group.as_str(), r.requests, r.total_tokens, r.cost_nano))
        .collect();
    assert_eq!(
        got,
        [
            ("", 1, 80, 80_000),
            ("ops", 1, 40, 40_000),
            ("research", 2, 30, 30_000)
        ]
    );
    let rows = a.query_usage(q("key", "research")).await?.into_inner().rows;
    let got: Vec<_> = rows.iter().map(|r| r.group.as_str()).collect();
    assert_eq!(got, ["alice", "bob"]);
    Ok(())
});
