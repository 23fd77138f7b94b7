//! `switchyard usage` and `switchyard health`: what workers reported, read back through
//! the Admin API (QueryUsage, GetHealth, HealthHistory).
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use switchyard_proto::v1 as pb;

use crate::{
    client::Admin,
    commands::Ctx,
    table,
    view::{or_dash, time_cell},
    UsageError,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    Key,
    /// The key's team when the request ran.
    Team,
    Model,
    Backend,
    Provider,
    Worker,
    Credential,
    /// The UTC calendar day.
    Day,
    None,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Backend => "backend",
            GroupBy::Provider => "provider",
            GroupBy::Worker => "worker",
            GroupBy::Credential => "credential",
            GroupBy::Day => "day",
            GroupBy::None => "none",
        }
    }
}

/// Requests, errors, tokens and latency per key, model, backend, provider, worker or credential.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Window ending now (e.g. `1h`, `7d`). Default: everything.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["from", "to"])]
    pub since: Option<Duration>,
    /// Start of the window, RFC 3339 (e.g. `2026-01-01T00:00:00Z`), inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window, RFC 3339, exclusive. Default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Group rows by this field.
    #[arg(long = "by", visible_alias = "group-by", value_enum, default_value_t = GroupBy::Key)]
    pub by: GroupBy,
    /// Only this client key.
    #[arg(long)]
    pub key: Option<String>,
    /// Only this public model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only the keys of this team.
    #[arg(long)]
    pub team: Option<String>,
}

/// What requests cost (their tokens at the price of the snapshot each ran under).
#[derive(Debug, Args)]
pub struct SpendArgs {
    /// Window ending now (e.g. `1h`, `30d`). Default: everything.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["from", "to"])]
    pub since: Option<Duration>,
    /// Start of the window, RFC 3339, inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window, RFC 3339, exclusive. Default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Group rows by this field.
    #[arg(long = "by", visible_alias = "group-by", value_enum, default_value_t = SpendBy::Key)]
    pub by: SpendBy,
    /// Only this client key.
    #[arg(long)]
    pub key: Option<String>,
    /// Only this public model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only the keys of this team.
    #[arg(long)]
    pub team: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpendBy {
    Key,
    Team,
    Model,
    Backend,
    Provider,
    Day,
    None,
}

impl SpendBy {
    fn group(self) -> GroupBy {
        match self {
            SpendBy::Key => GroupBy::Key,
            SpendBy::Team => GroupBy::Team,
            SpendBy::Model => GroupBy::Model,
            SpendBy::Backend => GroupBy::Backend,
            SpendBy::Provider => GroupBy::Provider,
            SpendBy::Day => GroupBy::Day,
            SpendBy::None => GroupBy::None,
        }
    }
}

/// Health of every backend and credential as the fleet sees it, or its history.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(subcommand)]
    pub cmd: Option<HealthCmd>,
    /// Only the backends of this model (and the credentials of their providers).
    #[arg(long)]
    pub model: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum HealthCmd {
    /// Recent health changes of a backend (`NAME` or `MODEL/BACKEND`) or a provider.
    History {
        target: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn parse_time(flag: &str, s: &str) -> Result<i64> {
    humantime::parse_rfc3339_weak(s).map(unix_ms).map_err(|e| {
        UsageError(format!(
            "--{flag} {s:?}: {e} (want RFC 3339, e.g. 2026-01-01T00:00:00Z)"
        ))
        .into()
    })
}

#[derive(Debug, Serialize)]
pub struct UsageRowView {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cache_write_tokens: u64,
    /// The priced requests' cost, nano-units of the currency (exact).
    pub cost_nano: u64,
    /// Requests with tokens and no price: not in `cost_nano`, unknown rather than free.
    pub unpriced_requests: u64,
    pub retries: u64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
}

impl UsageRowView {
    /// The cost column: the priced requests' cost, and a mark when some were unpriced.
    fn cost_cell(&self) -> String {
        match self.unpriced_requests {
            0 => crate::price::fmt_cost(self.cost_nano),
            n if n == self.requests => "unpriced".into(),
            n => format!("{} +{n} unpriced", crate::price::fmt_cost(self.cost_nano)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct UsageView {
    pub from_ms: i64,
    pub to_ms: i64,
    pub group_by: String,
    pub rows: Vec<UsageRowView>,
}

/// The window and grouping of a `usage` or `spend` query.
struct Window<'a> {
    since: Option<Duration>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    by: GroupBy,
    key: Option<String>,
    model: Option<String>,
    team: Option<String>,
}

async fn query(admin: &mut Admin, w: Window<'_>) -> Result<UsageView> {
    let now = unix_ms(SystemTime::now());
    let from_ms = match (&w.since, &w.from) {
        (Some(d), _) => now - i64::try_from(d.as_millis()).unwrap_or(i64::MAX).min(now),
        (None, Some(f)) => parse_time("from", f)?,
        (None, None) => 0,
    };
    let to_ms = match &w.to {
        Some(t) => parse_time("to", t)?,
        None => 0,
    };
    if to_ms != 0 && to_ms <= from_ms {
        return Err(UsageError("--to must be after --from".into()).into());
    }
    let r = admin
        .client
        .query_usage(pb::QueryUsageRequest {
            team: w.team.unwrap_or_default(),
            from_ms,
            to_ms,
            group_by: w.by.as_str().into(),
            key_name: w.key.unwrap_or_default(),
            model: w.model.unwrap_or_default(),
        })
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    Ok(UsageView {
        from_ms,
        to_ms: if to_ms == 0 { now } else { to_ms },
        group_by: w.by.as_str().into(),
        rows: r
            .rows
            .into_iter()
            .map(|r| UsageRowView {
                group: r.group,
                requests: r.requests,
                errors: r.errors,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                total_tokens: r.total_tokens,
                cached_tokens: r.cached_tokens,
                reasoning_tokens: r.reasoning_tokens,
                cache_write_tokens: r.cache_write_tokens,
                cost_nano: r.cost_nano,
                unpriced_requests: r.unpriced_requests,
                retries: r.retries,
                p50_latency_ms: r.p50_latency_ms,
                p95_latency_ms: r.p95_latency_ms,
            })
            .collect(),
    })
}

pub async fn usage(ctx: &Ctx, admin: &mut Admin, a: UsageArgs) -> Result<()> {
    let v = query(
        admin,
        Window {
            since: a.since,
            from: a.from.as_deref(),
            to: a.to.as_deref(),
            by: a.by,
            key: a.key,
            model: a.model,
            team: a.team,
        },
    )
    .await?;
    ctx.show(&v, || {
        let rows: Vec<Vec<String>> = v
            .rows
            .iter()
            .map(|r| {
                vec![
                    or_dash(&r.group),
                    r.requests.to_string(),
                    r.errors.to_string(),
                    r.prompt_tokens.to_string(),
                    r.completion_tokens.to_string(),
                    r.total_tokens.to_string(),
                    r.cached_tokens.to_string(),
                    r.reasoning_tokens.to_string(),
                    r.cache_write_tokens.to_string(),
                    r.retries.to_string(),
                    format!("{:.1}", r.p50_latency_ms),
                    format!("{:.1}", r.p95_latency_ms),
                    r.cost_cell(),
                ]
            })
            .collect();
        let by = v.group_by.to_uppercase();
        table::render(
            &[
                &by,
                "REQUESTS",
                "ERRORS",
                "PROMPT",
                "COMPLETION",
                "TOTAL",
                "CACHED",
                "REASONING",
                "CACHE_WRITE",
                "RETRIES",
                "P50_MS",
                "P95_MS",
                "COST",
            ],
            &rows,
        )
    })
}

/// `switchyard spend`: cost per group, with the token classes it was computed from.
pub async fn spend(ctx: &Ctx, admin: &mut Admin, a: SpendArgs) -> Result<()> {
    let v = query(
        admin,
        Window {
            since: a.since,
            from: a.from.as_deref(),
            to: a.to.as_deref(),
            by: a.by.group(),
            key: a.key,
            model: a.model,
            team: a.team,
        },
    )
    .await?;
    ctx.show(&v, || {
        let mut rows: Vec<Vec<String>> = v
            .rows
            .iter()
            .map(|r| {
                vec![
                    or_dash(&r.group),
                    r.requests.to_string(),
                    r.prompt_tokens.to_string(),
                    r.cached_tokens.to_string(),
                    r.cache_write_tokens.to_string(),
                    r.completion_tokens.to_string(),
                    r.reasoning_tokens.to_string(),
                    crate::price::fmt_cost(r.cost_nano),
                    r.unpriced_requests.to_string(),
                ]
            })
            .collect();
        let total = v.rows.iter().map(|r| r.cost_nano).fold(0u64, u64::saturating_add);
        let unpriced: u64 = v.rows.iter().map(|r| r.unpriced_requests).sum();
        rows.push(vec![
            "(total)".into(),
            v.rows.iter().map(|r| r.requests).sum::<u64>().to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            crate::price::fmt_cost(total),
            unpriced.to_string(),
        ]);
        let by = v.group_by.to_uppercase();
        table::render(
            &[
                &by,
                "REQUESTS",
                "PROMPT",
                "CACHED",
                "CACHE_WRITE",
                "COMPLETION",
                "REASONING",
                "COST",
                "UNPRICED",
            ],
            &rows,
        )
    })
}

#[derive(Debug, Serialize)]
pub struct TargetView {
    pub kind: String,
    pub model: String,
    pub backend: String,
    pub provider: String,
    pub credential: String,
    pub healthy_workers: u32,
    pub total_workers: u32,
    pub healthy: bool,
    pub last_reason: String,
    pub last_change_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub ts_ms: i64,
    pub worker_id: String,
    pub kind: String,
    pub model: String,
    pub backend: String,
    pub provider: String,
    pub credential: String,
    pub healthy: bool,
    pub reason: String,
}

fn target_name(kind: &str, model: &str, backend: &str, provider: &str, credential: &str) -> String {
    if kind == "credential" {
        format!("{provider}/{credential}")
    } else {
        format!("{model}/{backend}")
    }
}

pub async fn health(ctx: &Ctx, admin: &mut Admin, a: HealthArgs) -> Result<()> {
    match a.cmd {
        Some(HealthCmd::History { target, limit }) => history(ctx, admin, target, limit).await,
        None => current(ctx, admin, a.model).await,
    }
}

async fn current(ctx: &Ctx, admin: &mut Admin, model: Option<String>) -> Result<()> {
    let r = admin
        .client
        .get_health(pb::GetHealthRequest {
            model: model.unwrap_or_default(),
        })
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let v: Vec<TargetView> = r
        .targets
        .into_iter()
        .map(|t| TargetView {
            healthy: t.healthy_workers == t.total_workers,
            kind: t.kind,
            model: t.model,
            backend: t.backend,
            provider: t.provider,
            credential: t.credential,
            healthy_workers: t.healthy_workers,
            total_workers: t.total_workers,
            last_reason: t.last_reason,
            last_change_ms: t.last_change_ms,
        })
        .collect();
    ctx.show(&v, || {
        let rows: Vec<Vec<String>> = v
            .iter()
            .map(|t| {
                vec![
                    t.kind.clone(),
                    target_name(&t.kind, &t.model, &t.backend, &t.provider, &t.credential),
                    format!("{}/{}", t.healthy_workers, t.total_workers),
                    or_dash(&t.last_reason),
                    time_cell(t.last_change_ms),
                ]
            })
            .collect();
        table::render(
            &["KIND", "TARGET", "HEALTHY", "LAST REASON", "LAST CHANGE"],
            &rows,
        )
    })
}

async fn history(ctx: &Ctx, admin: &mut Admin, target: String, limit: u32) -> Result<()> {
    let r = admin
        .client
        .health_history(pb::HealthHistoryRequest {
            backend: target,
            limit,
        })
        .await
        .map_err(|s| admin.status(s))?
        .into_inner();
    let v: Vec<EventView> = r
        .events
        .into_iter()
        .map(|e| EventView {
            ts_ms: e.ts_ms,
            worker_id: e.worker_id,
            kind: e.kind,
            model: e.model,
            backend: e.backend,
            provider: e.provider,
            credential: e.credential,
            healthy: e.healthy,
            reason: e.reason,
        })
        .collect();
    ctx.show(&v, || {
        let rows: Vec<Vec<String>> = v
            .iter()
            .map(|e| {
                vec![
                    time_cell(e.ts_ms),
                    e.worker_id.clone(),
                    e.kind.clone(),
                    target_name(&e.kind, &e.model, &e.backend, &e.provider, &e.credential),
                    if e.healthy { "healthy" } else { "unhealthy" }.to_string(),
                    or_dash(&e.reason),
                ]
            })
            .collect();
        table::render(&["TIME", "WORKER", "KIND", "TARGET", "STATE", "REASON"], &rows)
    })
}
