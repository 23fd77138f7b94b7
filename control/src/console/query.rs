//! Read-only queries the console needs beyond the Admin RPCs' own: usage per time
//! bucket, time-to-first-byte percentiles, and the health events of a window with the
//! state each worker was in when it began. They read the same tables as
//! [`crate::usage`] and write nothing.
use std::collections::{BTreeMap, HashMap};

use sqlx::{AnyPool, Row};

use crate::{usage, Error};

/// Same rule as [`crate::usage`]: a request is an error when its status is >= 400 or
/// its outcome is not `ok`.
const ERROR_EXPR: &str = "CASE WHEN status >= 400 OR outcome <> 'ok' THEN 1 ELSE 0 END";

/// What the traffic page groups by: a usage column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Key,
    Team,
    Model,
    Backend,
    Provider,
}

impl By {
    const ALL: [By; 5] = [By::Key, By::Team, By::Model, By::Backend, By::Provider];

    /// The groupings QueryUsage knows (`team` only once usage records carry one).
    pub fn available() -> impl Iterator<Item = By> {
        By::ALL
            .into_iter()
            .filter(|b| usage::GroupBy::parse(b.as_str()).is_ok())
    }
    pub fn parse(s: &str) -> Option<By> {
        By::available().find(|b| b.as_str() == s)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            By::Key => "key",
            By::Team => "team",
            By::Model => "model",
            By::Backend => "backend",
            By::Provider => "provider",
        }
    }
    fn column(self) -> &'static str {
        match self {
            By::Key => "key_name",
            By::Team => "team",
            By::Model => "model",
            By::Backend => "backend",
            By::Provider => "provider",
        }
    }
}

/// Sums of one (bucket, group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub requests: u64,
    pub errors: u64,
    pub tokens: u64,
    pub cost_nano: u64,
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Usage over `[from, to)` in buckets of `bucket_ms`, per group: (bucket start, group) →
/// sums. Raw records and hourly roll-ups both count (a roll-up lands in the bucket of
/// its hour).
pub async fn buckets(
    pool: &AnyPool,
    from_ms: i64,
    to_ms: i64,
    bucket_ms: i64,
    by: By,
) -> Result<BTreeMap<(i64, String), Bucket>, Error> {
    let col = by.column();
    let b = bucket_ms.max(1);
    let mut out: BTreeMap<(i64, String), Bucket> = BTreeMap::new();
    let raw = format!(
        "SELECT (ts_ms / {b}) * {b} AS t, {col} AS g, COUNT(*) AS n, \
         COALESCE(CAST(SUM({ERROR_EXPR}) AS BIGINT), 0) AS e, \
         COALESCE(CAST(SUM(total_tokens) AS BIGINT), 0) AS tok, \
         COALESCE(CAST(SUM(cost_nano) AS BIGINT), 0) AS cost \
         FROM usage_records WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY (ts_ms / {b}) * {b}, {col}"
    );
    let hourly = format!(
        "SELECT (hour_ms / {b}) * {b} AS t, {col} AS g, COALESCE(CAST(SUM(requests) AS BIGINT), 0) AS n, \
         COALESCE(CAST(SUM(errors) AS BIGINT), 0) AS e, \
         COALESCE(CAST(SUM(total_tokens) AS BIGINT), 0) AS tok, \
         COALESCE(CAST(SUM(cost_nano) AS BIGINT), 0) AS cost \
         FROM usage_hourly WHERE hour_ms >= $1 AND hour_ms < $2 GROUP BY (hour_ms / {b}) * {b}, {col}"
    );
    for sql in [raw, hourly] {
        for row in sqlx::query(&sql)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(pool)
            .await?
        {
            let t: i64 = row.try_get("t")?;
            let g: String = row.try_get("g")?;
            let s = out.entry((t, g)).or_default();
            s.requests += u(row.try_get("n")?);
            s.errors += u(row.try_get("e")?);
            s.tokens += u(row.try_get("tok")?);
            s.cost_nano += u(row.try_get("cost")?);
        }
    }
    Ok(out)
}

/// p50 and p95 time to first byte (ms) per group over `[from, to)`, from raw records
/// (roll-ups keep no samples), counting only records that have one.
pub async fn ttfb(
    pool: &AnyPool,
    from_ms: i64,
    to_ms: i64,
    by: By,
) -> Result<HashMap<String, (f64, f64)>, Error> {
    let sql = format!(
        "SELECT {} AS g, ttfb_us FROM usage_records WHERE ts_ms >= $1 AND ts_ms < $2 AND ttfb_us > 0",
        by.column()
    );
    let mut samples: HashMap<String, Vec<u64>> = HashMap::new();
    for row in sqlx::query(&sql)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(pool)
        .await?
    {
        let g: String = row.try_get("g")?;
        samples.entry(g).or_default().push(u(row.try_get("ttfb_us")?));
    }
    Ok(samples
        .into_iter()
        .map(|(g, mut v)| {
            v.sort_unstable();
            let p = |q| usage::percentile(&v, q) as f64 / 1000.0;
            (g, (p(50.0), p(95.0)))
        })
        .collect())
}

/// One stored health event.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub ts_ms: i64,
    pub worker_id: String,
    pub target: Target,
    pub healthy: bool,
    pub reason: String,
}

/// What an event is about; the key of a timeline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub kind: String,
    pub model: String,
    pub backend: String,
    pub provider: String,
    pub credential: String,
}

const EVENT_COLS: &str = "id, ts_ms, worker_id, kind, model, backend, provider, credential, healthy, reason";

/// Most events a window loads; a fleet flapping harder than this shows the oldest part
/// of the window only, and the page says so.
pub const MAX_EVENTS: usize = 20_000;

fn event(r: &sqlx::any::AnyRow) -> Result<Event, Error> {
    Ok(Event {
        id: r.try_get("id")?,
        ts_ms: r.try_get("ts_ms")?,
        worker_id: r.try_get("worker_id")?,
        target: Target {
            kind: r.try_get("kind")?,
            model: r.try_get("model")?,
            backend: r.try_get("backend")?,
            provider: r.try_get("provider")?,
            credential: r.try_get("credential")?,
        },
        healthy: r.try_get::<i64, _>("healthy")? != 0,
        reason: r.try_get("reason")?,
    })
}

/// The health history of a window: each (target, worker)'s latest event before
/// `from_ms` (the state the window starts in), and the window's events, oldest first.
pub async fn health_window(pool: &AnyPool, from_ms: i64) -> Result<(Vec<Event>, Vec<Event>), Error> {
    let before = format!(
        "SELECT {EVENT_COLS} FROM health_events h WHERE ts_ms < $1 AND ts_ms = (SELECT MAX(ts_ms) \
         FROM health_events l WHERE l.kind = h.kind AND l.model = h.model AND l.backend = h.backend \
         AND l.provider = h.provider AND l.credential = h.credential AND l.worker_id = h.worker_id \
         AND l.ts_ms < $1)"
    );
    let mut start: HashMap<(Target, String), Event> = HashMap::new();
    for row in sqlx::query(&before).bind(from_ms).fetch_all(pool).await? {
        let e = event(&row)?;
        let k = (e.target.clone(), e.worker_id.clone());
        // Two events in one millisecond: the larger id (uuid v7) is the later one.
        if start.get(&k).is_none_or(|old| old.id < e.id) {
            start.insert(k, e);
        }
    }
    let within = format!(
        "SELECT {EVENT_COLS} FROM health_events WHERE ts_ms >= $1 ORDER BY ts_ms, id LIMIT {MAX_EVENTS}"
    );
    let events = sqlx::query(&within)
        .bind(from_ms)
        .fetch_all(pool)
        .await?
        .iter()
        .map(event)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((start.into_values().collect(), events))
}
