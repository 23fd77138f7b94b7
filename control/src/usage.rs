//! Reading what workers reported: usage summaries (QueryUsage), the fleet's view of
//! backend and credential health (GetHealth, HealthHistory), and the retention task
//! that rolls raw usage records older than the retention into hourly aggregates.
//!
//! Percentiles are computed in Rust from the raw latencies of the range (fine at our
//! scale: one `BIGINT` per request). Hours that were rolled up contribute counts and
//! tokens but no latency samples, so p50/p95 cover the raw part of the range only.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{AnyPool, Row};
use switchyard_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, store::now_ms, Error};

const HOUR_MS: i64 = 3_600_000;

/// A request counts as an error when its status is >= 400 or its outcome is not `ok`.
const ERROR_EXPR: &str = "CASE WHEN status >= 400 OR outcome <> 'ok' THEN 1 ELSE 0 END";

/// A record is unpriced when it has no cost (the worker found no price for a request
/// with tokens, or it was stored before costs existed).
const UNPRICED_EXPR: &str = "CASE WHEN cost_nano IS NULL THEN 1 ELSE 0 END";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    /// The key's team when the request ran (`""` = keys without a team).
    Team,
    Model,
    Backend,
    Provider,
    Worker,
    Credential,
    /// The UTC calendar day, `YYYY-MM-DD`.
    Day,
    None,
}

impl GroupBy {
    pub fn parse(s: &str) -> Result<GroupBy, Error> {
        Ok(match s {
            "key" => GroupBy::Key,
            "team" => GroupBy::Team,
            "model" => GroupBy::Model,
            "backend" => GroupBy::Backend,
            "provider" => GroupBy::Provider,
            "worker" => GroupBy::Worker,
            "credential" => GroupBy::Credential,
            "day" => GroupBy::Day,
            "" | "none" => GroupBy::None,
            other => {
                return Err(Error::InvalidArgument(format!(
                "group_by must be key, team, model, backend, provider, worker, credential, day or none (got {other:?})"
            )))
            }
        })
    }

    /// The expression grouped on; `ts_col` is the table's time column (`ts_ms` in
    /// `usage_records`, `hour_ms` in `usage_hourly`; the other columns share names). A
    /// day groups on its first millisecond, as text, turned into a date by
    /// [`day_label`] once summed.
    fn column(self, ts_col: &str) -> Option<String> {
        Some(
            match self {
                GroupBy::Key => "key_name",
                GroupBy::Team => "team",
                GroupBy::Model => "model",
                GroupBy::Backend => "backend",
                GroupBy::Provider => "provider",
                GroupBy::Worker => "worker_id",
                GroupBy::Credential => "credential",
                GroupBy::Day => {
                    return Some(format!("CAST(({ts_col} / {DAY_MS}) * {DAY_MS} AS TEXT)"));
                }
                GroupBy::None => return None,
            }
            .to_string(),
        )
    }
}

const DAY_MS: i64 = 86_400_000;

/// `YYYY-MM-DD` of the UTC day that starts at `ms` (a day group's key), by the civil
/// calendar (Howard Hinnant's `civil_from_days`).
fn day_label(ms: i64) -> String {
    let z = ms.div_euclid(DAY_MS) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[derive(Clone, Debug)]
pub struct UsageQuery {
    pub from_ms: i64,
    /// Exclusive; `i64::MAX` = open.
    pub to_ms: i64,
    pub group_by: GroupBy,
    pub key_name: Option<String>,
    pub model: Option<String>,
    pub team: Option<String>,
}

impl UsageQuery {
    pub fn from_proto(r: &pb::QueryUsageRequest) -> Result<UsageQuery, Error> {
        let q = UsageQuery {
            from_ms: r.from_ms.max(0),
            to_ms: if r.to_ms <= 0 { i64::MAX } else { r.to_ms },
            group_by: GroupBy::parse(&r.group_by)?,
            key_name: Some(r.key_name.clone()).filter(|s| !s.is_empty()),
            model: Some(r.model.clone()).filter(|s| !s.is_empty()),
            team: Some(r.team.clone()).filter(|s| !s.is_empty()),
        };
        if q.to_ms <= q.from_ms {
            return Err(Error::InvalidArgument("to must be after from".into()));
        }
        Ok(q)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageSummary {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cache_write_tokens: u64,
    /// The priced requests' cost, nano-units of the currency.
    pub cost_nano: u64,
    /// Requests with tokens and no price: their cost is unknown.
    pub unpriced_requests: u64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
}

impl UsageSummary {
    pub fn to_proto(&self) -> pb::UsageRow {
        pb::UsageRow {
            group: self.group.clone(),
            requests: self.requests,
            errors: self.errors,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens,
            cached_tokens: self.cached_tokens,
            reasoning_tokens: self.reasoning_tokens,
            p50_latency_ms: self.p50_latency_ms,
            p95_latency_ms: self.p95_latency_ms,
            retries: self.retries,
            cache_write_tokens: self.cache_write_tokens,
            cost_nano: self.cost_nano,
            unpriced_requests: self.unpriced_requests,
        }
    }
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `WHERE` clause shared by the raw and hourly queries, with `$n` placeholders in
/// the order they appear (SQLite numbers named parameters by first appearance).
fn filters(q: &UsageQuery, ts_col: &str) -> (String, Vec<String>) {
    let mut sql = format!(" WHERE {ts_col} >= $1 AND {ts_col} < $2");
    let mut binds = Vec::new();
    if let Some(k) = &q.key_name {
        binds.push(k.clone());
        sql.push_str(&format!(" AND key_name = ${}", binds.len() + 2));
    }
    if let Some(m) = &q.model {
        binds.push(m.clone());
        sql.push_str(&format!(" AND model = ${}", binds.len() + 2));
    }
    if let Some(t) = &q.team {
        binds.push(t.clone());
        sql.push_str(&format!(" AND team = ${}", binds.len() + 2));
    }
    (sql, binds)
}

/// Sum usage over `[from, to)` from raw records and hourly roll-ups.
pub async fn query_usage(pool: &AnyPool, q: &UsageQuery) -> Result<Vec<UsageSummary>, Error> {
    let group = |ts: &str| {
        let c = q.group_by.column(ts);
        let by = c.as_ref().map(|c| format!(" GROUP BY {c}")).unwrap_or_default();
        (c.unwrap_or_else(|| "''".into()), by)
    };
    let (group_sel, group_by) = group("ts_ms");
    let mut out: BTreeMap<String, UsageSummary> = BTreeMap::new();

    // Raw records: counts in SQL.
    let (where_raw, binds) = filters(q, "ts_ms");
    let sql = format!(
        "SELECT {group_sel} AS g, COUNT(*) AS requests, \
         COALESCE(CAST(SUM({ERROR_EXPR}) AS BIGINT), 0) AS errors, \
         COALESCE(CAST(SUM(retries) AS BIGINT), 0) AS retries, \
         COALESCE(CAST(SUM(prompt_tokens) AS BIGINT), 0) AS p, \
         COALESCE(CAST(SUM(completion_tokens) AS BIGINT), 0) AS c, \
         COALESCE(CAST(SUM(total_tokens) AS BIGINT), 0) AS t, \
         COALESCE(CAST(SUM(cached_tokens) AS BIGINT), 0) AS ca, \
         COALESCE(CAST(SUM(reasoning_tokens) AS BIGINT), 0) AS r, \
         COALESCE(CAST(SUM(cache_write_tokens) AS BIGINT), 0) AS cw, \
         COALESCE(CAST(SUM(cost_nano) AS BIGINT), 0) AS cost, \
         COALESCE(CAST(SUM({UNPRICED_EXPR}) AS BIGINT), 0) AS unpriced \
         FROM usage_records{where_raw}{group_by}"
    );
    add_rows(pool, &sql, q, &binds, &mut out).await?;

    // Hourly roll-ups whose hour lies in the range.
    let (group_sel, group_by) = group("hour_ms");
    let (where_h, binds_h) = filters(q, "hour_ms");
    let sql = format!(
        "SELECT {group_sel} AS g, COALESCE(CAST(SUM(requests) AS BIGINT), 0) AS requests, \
         COALESCE(CAST(SUM(errors) AS BIGINT), 0) AS errors, \
         COALESCE(CAST(SUM(retries) AS BIGINT), 0) AS retries, \
         COALESCE(CAST(SUM(prompt_tokens) AS BIGINT), 0) AS p, \
         COALESCE(CAST(SUM(completion_tokens) AS BIGINT), 0) AS c, \
         COALESCE(CAST(SUM(total_tokens) AS BIGINT), 0) AS t, \
         COALESCE(CAST(SUM(cached_tokens) AS BIGINT), 0) AS ca, \
         COALESCE(CAST(SUM(reasoning_tokens) AS BIGINT), 0) AS r, \
         COALESCE(CAST(SUM(cache_write_tokens) AS BIGINT), 0) AS cw, \
         COALESCE(CAST(SUM(cost_nano) AS BIGINT), 0) AS cost, \
         COALESCE(CAST(SUM(unpriced_requests) AS BIGINT), 0) AS unpriced \
         FROM usage_hourly{where_h}{group_by}"
    );
    add_rows(pool, &sql, q, &binds_h, &mut out).await?;

    // Latency samples for percentiles (raw records only).
    let (group_sel, _) = group("ts_ms");
    let sql = format!("SELECT {group_sel} AS g, latency_us FROM usage_records{where_raw}");
    let mut query = sqlx::query(&sql).bind(q.from_ms).bind(q.to_ms);
    for b in &binds {
        query = query.bind(b);
    }
    let mut samples: HashMap<String, Vec<u64>> = HashMap::new();
    for row in query.fetch_all(pool).await? {
        let g: String = row.try_get("g")?;
        let l: i64 = row.try_get("latency_us")?;
        samples.entry(g).or_default().push(u(l));
    }
    for (g, mut v) in samples {
        v.sort_unstable();
        if let Some(s) = out.get_mut(&g) {
            s.p50_latency_ms = percentile(&v, 50.0) as f64 / 1000.0;
            s.p95_latency_ms = percentile(&v, 95.0) as f64 / 1000.0;
        }
    }
    let rows = out.into_values().filter(|s| s.requests > 0);
    Ok(if q.group_by == GroupBy::Day {
        rows.map(|mut s| {
            s.group = day_label(s.group.parse().unwrap_or(0));
            s
        })
        .collect()
    } else {
        rows.collect()
    })
}

async fn add_rows(
    pool: &AnyPool,
    sql: &str,
    q: &UsageQuery,
    binds: &[String],
    out: &mut BTreeMap<String, UsageSummary>,
) -> Result<(), Error> {
    let mut query = sqlx::query(sql).bind(q.from_ms).bind(q.to_ms);
    for b in binds {
        query = query.bind(b);
    }
    for row in query.fetch_all(pool).await? {
        let g: String = row.try_get("g")?;
        let s = out.entry(g.clone()).or_insert_with(|| UsageSummary {
            group: g,
            ..Default::default()
        });
        s.requests += u(row.try_get("requests")?);
        s.errors += u(row.try_get("errors")?);
        s.retries += u(row.try_get("retries")?);
        s.prompt_tokens += u(row.try_get("p")?);
        s.completion_tokens += u(row.try_get("c")?);
        s.total_tokens += u(row.try_get("t")?);
        s.cached_tokens += u(row.try_get("ca")?);
        s.reasoning_tokens += u(row.try_get("r")?);
        s.cache_write_tokens += u(row.try_get("cw")?);
        s.cost_nano += u(row.try_get("cost")?);
        s.unpriced_requests += u(row.try_get("unpriced")?);
    }
    Ok(())
}

/// Roll raw records older than `now - retention` (cut at an hour boundary) into
/// `usage_hourly` and delete them, in one transaction. Running it twice is harmless:
/// the second run finds no raw rows below the cut. The ids of rolled-up records are
/// kept for one more retention period, so Report still rejects them as duplicates
/// (a resend later than that would be counted again). Returns the rows rolled up.
pub async fn roll_up(pool: &AnyPool, retention: Duration, now: i64) -> Result<u64, Error> {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cut = (now.saturating_sub(retention_ms)).div_euclid(HOUR_MS) * HOUR_MS;
    if cut <= 0 {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    // Postgres rejects an upsert that touches one row twice; GROUP BY makes the
    // selected keys unique. `WHERE` before `ON CONFLICT` keeps SQLite's parser happy.
    sqlx::query(&format!(
        "INSERT INTO usage_hourly (hour_ms, key_name, model, backend, provider, worker_id, credential, \
         requests, errors, retries, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, \
         latency_us_sum, latency_us_max, cache_write_tokens, cost_nano, unpriced_requests, team) \
         SELECT (ts_ms / {HOUR_MS}) * {HOUR_MS}, key_name, model, backend, provider, worker_id, credential, \
         COUNT(*), CAST(SUM({ERROR_EXPR}) AS BIGINT), CAST(SUM(retries) AS BIGINT), \
         CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(completion_tokens) AS BIGINT), CAST(SUM(total_tokens) AS BIGINT), \
         CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(reasoning_tokens) AS BIGINT), \
         CAST(SUM(latency_us) AS BIGINT), MAX(latency_us), CAST(SUM(cache_write_tokens) AS BIGINT), \
         COALESCE(CAST(SUM(cost_nano) AS BIGINT), 0), CAST(SUM({UNPRICED_EXPR}) AS BIGINT), MAX(team) \
         FROM usage_records WHERE ts_ms < $1 \
         GROUP BY (ts_ms / {HOUR_MS}) * {HOUR_MS}, key_name, model, backend, provider, worker_id, credential \
         ON CONFLICT (hour_ms, key_name, model, backend, provider, worker_id, credential) DO UPDATE SET \
         requests = usage_hourly.requests + excluded.requests, \
         errors = usage_hourly.errors + excluded.errors, \
         retries = usage_hourly.retries + excluded.retries, \
         prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens, \
         total_tokens = usage_hourly.total_tokens + excluded.total_tokens, \
         cached_tokens = usage_hourly.cached_tokens + excluded.cached_tokens, \
         reasoning_tokens = usage_hourly.reasoning_tokens + excluded.reasoning_tokens, \
         latency_us_sum = usage_hourly.latency_us_sum + excluded.latency_us_sum, \
         cache_write_tokens = usage_hourly.cache_write_tokens + excluded.cache_write_tokens, \
         cost_nano = usage_hourly.cost_nano + excluded.cost_nano, \
         unpriced_requests = usage_hourly.unpriced_requests + excluded.unpriced_requests, \
         team = excluded.team, \
         latency_us_max = CASE WHEN excluded.latency_us_max > usage_hourly.latency_us_max \
           THEN excluded.latency_us_max ELSE usage_hourly.latency_us_max END"
    ))
    .bind(cut)
    .execute(&mut *tx)
    .await?;
    // Remember the ids for another retention period (a resent batch stays a duplicate).
    sqlx::query(
        "INSERT INTO usage_rolled_ids (id, rolled_at_ms) SELECT id, $1 FROM usage_records WHERE ts_ms < $2 \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(now)
    .bind(cut)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM usage_rolled_ids WHERE rolled_at_ms < $1")
        .bind(now.saturating_sub(retention_ms))
        .execute(&mut *tx)
        .await?;
    let n = sqlx::query("DELETE FROM usage_records WHERE ts_ms < $1")
        .bind(cut)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// The retention task: roll up once at start, then every `every`, until cancelled.
pub async fn run_retention(
    pool: AnyPool,
    retention: Duration,
    every: Duration,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    loop {
        let t = Instant::now();
        match roll_up(&pool, retention, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "usage records rolled up into hourly aggregates"),
            Err(e) => tracing::warn!(error = %e, "usage roll-up failed; retrying later"),
        }
        metrics.observe_db(t.elapsed());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One health event as stored.
#[derive(Clone, Debug)]
struct Event {
    id: String,
    ts_ms: i64,
    worker_id: String,
    kind: String,
    model: String,
    backend: String,
    provider: String,
    credential: String,
    healthy: bool,
    reason: String,
}

impl Event {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Event, Error> {
        Ok(Event {
            id: r.try_get("id")?,
            ts_ms: r.try_get("ts_ms")?,
            worker_id: r.try_get("worker_id")?,
            kind: r.try_get("kind")?,
            model: r.try_get("model")?,
            backend: r.try_get("backend")?,
            provider: r.try_get("provider")?,
            credential: r.try_get("credential")?,
            healthy: r.try_get::<i64, _>("healthy")? != 0,
            reason: r.try_get("reason")?,
        })
    }

    fn to_proto(&self) -> pb::HealthEvent {
        pb::HealthEvent {
            id: self.id.clone(),
            ts_ms: self.ts_ms,
            worker_id: self.worker_id.clone(),
            kind: self.kind.clone(),
            model: self.model.clone(),
            backend: self.backend.clone(),
            provider: self.provider.clone(),
            credential: self.credential.clone(),
            healthy: self.healthy,
            reason: self.reason.clone(),
        }
    }

    fn target(&self) -> Target {
        Target {
            kind: self.kind.clone(),
            model: self.model.clone(),
            backend: self.backend.clone(),
            provider: self.provider.clone(),
            credential: self.credential.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Target {
    kind: String,
    model: String,
    backend: String,
    provider: String,
    credential: String,
}

const EVENT_COLS: &str = "id, ts_ms, worker_id, kind, model, backend, provider, credential, healthy, reason";

/// The fleet's view of every backend and credential.
///
/// Targets are those of the current config (backends of `model` and the credentials
/// of their providers when `model` is set) plus any that workers reported about.
/// `n` is the number of connected workers; a connected worker counts as healthy for a
/// target unless its latest event about it says unhealthy ("no event = healthy": a
/// worker starts with everything healthy and reports every flip, and sends its full
/// state after connecting). With no worker connected, `n` is the number of workers
/// that ever reported about the target and their latest events decide.
pub async fn get_health(
    pool: &AnyPool,
    snapshot: &pb::Snapshot,
    connected: &HashSet<String>,
    model: Option<&str>,
) -> Result<Vec<pb::TargetHealth>, Error> {
    let mut targets: BTreeMap<Target, Vec<Event>> = BTreeMap::new();
    let mut providers_used: HashSet<&str> = HashSet::new();
    for m in &snapshot.models {
        if model.is_some_and(|want| want != m.name) {
            continue;
        }
        for b in &m.backends {
            providers_used.insert(&b.provider);
            targets
                .entry(Target {
                    kind: "backend".into(),
                    model: m.name.clone(),
                    backend: b.name.clone(),
                    provider: b.provider.clone(),
                    credential: String::new(),
                })
                .or_default();
        }
    }
    for p in &snapshot.providers {
        if model.is_some() && !providers_used.contains(p.name.as_str()) {
            continue;
        }
        for c in &p.credentials {
            targets
                .entry(Target {
                    kind: "credential".into(),
                    model: String::new(),
                    backend: String::new(),
                    provider: p.name.clone(),
                    credential: c.name.clone(),
                })
                .or_default();
        }
    }
    // Latest event per (target, worker).
    let sql = format!(
        "SELECT {EVENT_COLS} FROM health_events h WHERE ts_ms = (SELECT MAX(ts_ms) FROM health_events l \
         WHERE l.kind = h.kind AND l.model = h.model AND l.backend = h.backend AND l.provider = h.provider \
         AND l.credential = h.credential AND l.worker_id = h.worker_id)"
    );
    let mut latest: HashMap<(Target, String), Event> = HashMap::new();
    for row in sqlx::query(&sql).fetch_all(pool).await? {
        let e = Event::from_row(&row)?;
        let k = (e.target(), e.worker_id.clone());
        // Two events in the same millisecond: the larger id (uuid v7) is the later one.
        if latest.get(&k).is_none_or(|old| old.id < e.id) {
            latest.insert(k, e);
        }
    }
    for ((t, _), e) in latest {
        let keep = match model {
            None => true,
            Some(m) => {
                (t.kind == "backend" && t.model == m)
                    || (t.kind == "credential" && providers_used.contains(t.provider.as_str()))
            }
        };
        if keep {
            targets.entry(t).or_default().push(e);
        }
    }
    let mut out = Vec::with_capacity(targets.len());
    for (t, events) in targets {
        let (healthy, total) = if connected.is_empty() {
            let total = events.len();
            (events.iter().filter(|e| e.healthy).count(), total)
        } else {
            let sick = events
                .iter()
                .filter(|e| !e.healthy && connected.contains(&e.worker_id))
                .count();
            (connected.len() - sick.min(connected.len()), connected.len())
        };
        let last = events
            .iter()
            .max_by(|a, b| (a.ts_ms, &a.id).cmp(&(b.ts_ms, &b.id)));
        out.push(pb::TargetHealth {
            kind: t.kind,
            model: t.model,
            backend: t.backend,
            provider: t.provider,
            credential: t.credential,
            healthy_workers: u32::try_from(healthy).unwrap_or(u32::MAX),
            total_workers: u32::try_from(total).unwrap_or(u32::MAX),
            last_reason: last.map(|e| e.reason.clone()).unwrap_or_default(),
            last_change_ms: last.map_or(0, |e| e.ts_ms),
        });
    }
    Ok(out)
}

/// Recent events (newest first) for a backend name, `model/backend`, or a provider.
pub async fn health_history(pool: &AnyPool, target: &str, limit: u32) -> Result<Vec<pb::HealthEvent>, Error> {
    let limit = i64::from(if limit == 0 { 50 } else { limit.min(10_000) });
    let rows = if target.is_empty() {
        sqlx::query(&format!(
            "SELECT {EVENT_COLS} FROM health_events ORDER BY ts_ms DESC, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(pool)
        .await?
    } else if let Some((m, b)) = target.split_once('/') {
        sqlx::query(&format!(
            "SELECT {EVENT_COLS} FROM health_events WHERE model = $1 AND backend = $2 \
             ORDER BY ts_ms DESC, id DESC LIMIT $3"
        ))
        .bind(m)
        .bind(b)
        .bind(limit)
        .fetch_all(pool)
        .await?
    } else {
        sqlx::query(&format!(
            "SELECT {EVENT_COLS} FROM health_events WHERE backend = $1 OR provider = $1 \
             ORDER BY ts_ms DESC, id DESC LIMIT $2"
        ))
        .bind(target)
        .bind(limit)
        .fetch_all(pool)
        .await?
    };
    rows.iter()
        .map(|r| Event::from_row(r).map(|e| e.to_proto()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 95.0), 95);
        assert_eq!(percentile(&[7], 95.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn group_by_parses() {
        assert_eq!(GroupBy::parse("key").unwrap(), GroupBy::Key);
        assert_eq!(GroupBy::parse("").unwrap(), GroupBy::None);
        assert!(GroupBy::parse("secret").is_err());
    }
}
