//! The config store: sqlx `Any` over SQLite or Postgres with one set of portable
//! migrations. Every admin write goes through [`Store::mutate`]: under an in-process
//! lock it loads the whole config inside a transaction, lets the caller change it in
//! memory, validates the result, writes only the differences, bumps the persisted
//! version and commits. One code path for CRUD and Apply means one set of rules.
use std::{path::Path, str::FromStr, sync::LazyLock, time::Instant};

use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions},
    AnyConnection, AnyPool, ConnectOptions, Executor, Row,
};
use switchyard_proto::v1 as pb;
use tokio::sync::Mutex;

use crate::{crypto::Keyring, metrics::Metrics, model::*, secret::Secret, watch::WorkerState, Error};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

/// The result of a committed (or dry-run) write.
#[derive(Debug)]
pub struct Mutation<T> {
    pub value: T,
    pub changes: Vec<Change>,
    /// The version after the write (unchanged when nothing changed or on dry run).
    pub version: u64,
    /// The whole config after the write, timestamps filled in.
    pub state: ConfigState,
}

pub struct Store {
    pool: AnyPool,
    kind: DbKind,
    location: String,
    keyring: Keyring,
    /// Serialises writers (and snapshot reads, so a snapshot sees one committed state).
    write_lock: Mutex<()>,
    /// Bumped after every commit that changed the config; the snapshot builder waits on it.
    committed: tokio::sync::watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::Internal(format!("encode spec: {e}")))
}

fn unjson<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T, Error> {
    serde_json::from_str(s).map_err(|e| Error::Internal(format!("decode stored {what}: {e}")))
}

/// A provider's spec as stored: its JSON, with the proxy password (if any) sealed under the
/// master key like a credential secret, as `"proxy_password": {"sealed": …, "key_version": N}`.
/// A spec without one is stored exactly as before it existed.
fn provider_spec_json(spec: &ProviderSpec, keyring: &Keyring) -> Result<String, Error> {
    if spec.proxy_password.is_empty() {
        return json(spec);
    }
    let mut v = serde_json::to_value(spec).map_err(|e| Error::Internal(format!("encode spec: {e}")))?;
    let (sealed, kv) = keyring.seal(spec.proxy_password.expose())?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "proxy_password".into(),
            serde_json::json!({"sealed": sealed, "key_version": kv}),
        );
    }
    json(&v)
}

/// The stored sealed proxy password of a provider row, if any: (sealed text, key version).
fn sealed_proxy_password(v: &serde_json::Value) -> Option<(String, i64)> {
    let pw = v.get("proxy_password")?;
    Some((
        pw.get("sealed")?.as_str()?.to_string(),
        pw.get("key_version")?.as_i64()?,
    ))
}

fn provider_spec_from(stored: &str, keyring: &Keyring) -> Result<ProviderSpec, Error> {
    let v: serde_json::Value = unjson("provider", stored)?;
    let sealed = sealed_proxy_password(&v);
    let mut spec: ProviderSpec =
        serde_json::from_value(v).map_err(|e| Error::Internal(format!("decode stored provider: {e}")))?;
    if let Some((s, kv)) = sealed {
        spec.proxy_password = Secret::new(keyring.open(&s, kv)?);
    }
    Ok(spec)
}

/// `host:port/db` of a Postgres URL, without user or password.
fn pg_location(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => "postgres".into(),
    }
}

impl Store {
    /// Connect (creating the SQLite file and data dir if needed), migrate, and bring
    /// stored secrets to the current master key.
    pub async fn open(
        database_url: Option<&str>,
        data_dir: &Path,
        keyring: Keyring,
        metrics: Arc<Metrics>,
    ) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let (url, kind, location) = match database_url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                (u.to_string(), DbKind::Postgres, pg_location(u))
            }
            Some(u) if u.starts_with("sqlite:") => {
                let path = u
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:")
                    .split('?')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let url = if u.contains('?') {
                    u.to_string()
                } else {
                    format!("{u}?mode=rwc")
                };
                (url, DbKind::Sqlite, path)
            }
            Some(u) => {
                return Err(Error::Config(format!(
                    "database URL must start with sqlite: or postgres:// (got scheme {:?})",
                    u.split(':').next().unwrap_or_default()
                )))
            }
            None => {
                std::fs::create_dir_all(data_dir).map_err(|e| {
                    Error::Config(format!("cannot create data dir {}: {e}", data_dir.display()))
                })?;
                let path = data_dir.join("switchyard.db");
                (
                    format!("sqlite://{}?mode=rwc", path.display()),
                    DbKind::Sqlite,
                    path.display().to_string(),
                )
            }
        };
        let opts = AnyConnectOptions::from_str(&url)
            .map_err(|e| Error::Config(format!("bad database URL: {e}")))?
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == DbKind::Sqlite { 4 } else { 8 })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if kind == DbKind::Sqlite {
                        // WAL lets snapshot reads run beside writes; busy_timeout makes the
                        // report path wait instead of failing when an admin write holds the lock.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        let (committed, _) = tokio::sync::watch::channel(0);
        let store = Store {
            pool,
            kind,
            location,
            keyring,
            write_lock: Mutex::new(()),
            committed,
            metrics,
        };
        store.rekey_secrets().await?;
        let v = store.version().await?;
        store.committed.send_replace(v);
        Ok(store)
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }
    pub fn location(&self) -> &str {
        &self.location
    }
    pub fn encrypts(&self) -> bool {
        self.keyring.encrypts()
    }
    pub fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }
    /// The pool, for read-only queries that live in their own modules (`usage`).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Re-encrypt every stored secret whose key version is not the current one
    /// (rotation, first use of a master key, or removal of it). Does not bump the
    /// config version: the content is unchanged.
    async fn rekey_secrets(&self) -> Result<(), Error> {
        let _g = self.write_lock.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE meta SET value = value WHERE key = 'version'")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT provider, name, secret, key_version FROM credentials WHERE key_version <> $1",
        )
        .bind(self.keyring.current_version())
        .fetch_all(&mut *tx)
        .await?;
        let n = rows.len();
        for r in rows {
            let provider: String = r.try_get("provider")?;
            let name: String = r.try_get("name")?;
            let plain = self
                .keyring
                .open(&r.try_get::<String, _>("secret")?, r.try_get("key_version")?)?;
            let (sealed, ver) = self.keyring.seal(&plain)?;
            sqlx::query(
                "UPDATE credentials SET secret = $1, key_version = $2 WHERE provider = $3 AND name = $4",
            )
            .bind(sealed)
            .bind(ver)
            .bind(provider)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        // Providers' proxy passwords, sealed inside their spec.
        let mut n = n;
        for r in sqlx::query("SELECT name, spec FROM providers")
            .fetch_all(&mut *tx)
            .await?
        {
            let stored: String = r.try_get("spec")?;
            let v: serde_json::Value = unjson("provider", &stored)?;
            if sealed_proxy_password(&v).is_none_or(|(_, kv)| kv == self.keyring.current_version()) {
                continue;
            }
            let spec = provider_spec_from(&stored, &self.keyring)?;
            sqlx::query("UPDATE providers SET spec = $1 WHERE name = $2")
                .bind(provider_spec_json(&spec, &self.keyring)?)
                .bind(r.try_get::<String, _>("name")?)
                .execute(&mut *tx)
                .await?;
            n += 1;
        }
        tx.commit().await?;
        if n > 0 {
            tracing::info!(
                secrets = n,
                key_version = self.keyring.current_version(),
                "re-encrypted stored credential secrets"
            );
        }
        Ok(())
    }

    pub async fn version(&self) -> Result<u64, Error> {
        let mut conn = self.pool.acquire().await?;
        read_version(&mut conn).await
    }

    /// The whole config (reads only; may run beside a writer).
    pub async fn load(&self) -> Result<ConfigState, Error> {
        let t = Instant::now();
        let mut conn = self.pool.acquire().await?;
        let s = load_state(&mut conn, &self.keyring).await;
        self.metrics.observe_db(t.elapsed());
        s
    }

    /// Version and config as of one commit: holds the write lock while reading, so no
    /// write can land between the two.
    pub async fn load_consistent(&self) -> Result<(u64, ConfigState), Error> {
        let _g = self.write_lock.lock().await;
        let t = Instant::now();
        let mut conn = self.pool.acquire().await?;
        let v = read_version(&mut conn).await?;
        let s = load_state(&mut conn, &self.keyring).await?;
        self.metrics.observe_db(t.elapsed());
        Ok((v, s))
    }

    /// Change the config: `f` edits a copy of the current state; the result is
    /// validated, diffed and written in one transaction that also bumps the version.
    /// If `f` or validation fails, or `dry_run` is set, nothing is written.
    pub async fn mutate<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut ConfigState) -> Result<T, Error>,
    ) -> Result<Mutation<T>, Error> {
        let _g = self.write_lock.lock().await;
        let t = Instant::now();
        let mut tx = self.pool.begin().await?;
        // Take the write lock first: on SQLite a read transaction that later writes
        // fails with SQLITE_BUSY_SNAPSHOT if another connection (worker state, reports)
        // wrote in between; on Postgres this row lock also serialises writers across
        // control processes sharing one database.
        sqlx::query("UPDATE meta SET value = value WHERE key = 'version'")
            .execute(&mut *tx)
            .await?;
        let version = read_version(&mut tx).await?;
        let old = load_state(&mut tx, &self.keyring).await?;
        let mut new = old.clone();
        let value = f(&mut new)?;
        new.validate_references()?;
        let changes = diff(&old, &new);
        stamp(&old, &mut new, now_ms());
        if dry_run || changes.is_empty() {
            tx.rollback().await?;
            return Ok(Mutation {
                value,
                changes,
                version,
                state: new,
            });
        }
        self.write_changes(&mut tx, &new, &changes).await?;
        sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'version'")
            .execute(&mut *tx)
            .await?;
        let version = read_version(&mut tx).await?;
        tx.commit().await?;
        self.metrics.observe_db(t.elapsed());
        tracing::info!(version, changes = changes.len(), "config committed");
        self.committed.send_replace(version);
        Ok(Mutation {
            value,
            changes,
            version,
            state: new,
        })
    }

    async fn write_changes(
        &self,
        tx: &mut AnyConnection,
        new: &ConfigState,
        changes: &[Change],
    ) -> Result<(), Error> {
        // Deletes first, children before parents (the reverse of diff order).
        for c in changes.iter().rev().filter(|c| c.action == Action::Delete) {
            let (a, b) = c.name.split_once('/').unwrap_or((c.name.as_str(), ""));
            let q = match c.kind {
                "backend" => sqlx::query("DELETE FROM backends WHERE model = $1 AND name = $2")
                    .bind(a)
                    .bind(b),
                "model" => sqlx::query("DELETE FROM backends WHERE model = $1 AND name <> $2")
                    .bind(a)
                    .bind(""),
                "credential" => sqlx::query("DELETE FROM credentials WHERE provider = $1 AND name = $2")
                    .bind(a)
                    .bind(b),
                "provider" => sqlx::query("DELETE FROM credentials WHERE provider = $1 AND name <> $2")
                    .bind(a)
                    .bind(""),
                // A limit's consumption goes with it (a new limit of that name starts at 0).
                "limit" => {
                    sqlx::query("DELETE FROM limit_ledger WHERE limit_name = $1 AND instance_id <> $2")
                        .bind(a)
                        .bind("")
                }
                _ => sqlx::query("DELETE FROM api_keys WHERE name = $1 AND id <> $2")
                    .bind(a)
                    .bind(""),
            };
            q.execute(&mut *tx).await?;
            let parent = match c.kind {
                "model" => Some("DELETE FROM models WHERE name = $1"),
                "provider" => Some("DELETE FROM providers WHERE name = $1"),
                "limit" => Some("DELETE FROM limits WHERE name = $1"),
                _ => None,
            };
            if let Some(sql) = parent {
                sqlx::query(sql).bind(a).execute(&mut *tx).await?;
            }
        }
        for c in changes.iter().filter(|c| c.action != Action::Delete) {
            let create = c.action == Action::Create;
            let (a, b) = c.name.split_once('/').unwrap_or((c.name.as_str(), ""));
            let missing = || Error::Internal(format!("diff names unknown {} {}", c.kind, c.name));
            match c.kind {
                "provider" => {
                    let p = new.providers.get(a).ok_or_else(missing)?;
                    let sql = if create {
                        "INSERT INTO providers (spec, created_at_ms, updated_at_ms, name) VALUES ($1, $2, $3, $4)"
                    } else {
                        "UPDATE providers SET spec = $1, created_at_ms = $2, updated_at_ms = $3 WHERE name = $4"
                    };
                    sqlx::query(sql)
                        .bind(provider_spec_json(&p.spec, &self.keyring)?)
                        .bind(p.created_at_ms)
                        .bind(p.updated_at_ms)
                        .bind(&p.name)
                        .execute(&mut *tx)
                        .await?;
                }
                "credential" => {
                    let cr = new
                        .providers
                        .get(a)
                        .and_then(|p| p.credentials.get(b))
                        .ok_or_else(missing)?;
                    let (sealed, kv) = self.keyring.seal(cr.secret.expose())?;
                    let sql = if create {
                        "INSERT INTO credentials (secret, key_version, spec, created_at_ms, updated_at_ms, provider, name) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    } else {
                        "UPDATE credentials SET secret = $1, key_version = $2, spec = $3, created_at_ms = $4, updated_at_ms = $5 WHERE provider = $6 AND name = $7"
                    };
                    sqlx::query(sql)
                        .bind(sealed)
                        .bind(kv)
                        .bind(json(&cr.spec)?)
                        .bind(cr.created_at_ms)
                        .bind(cr.updated_at_ms)
                        .bind(a)
                        .bind(b)
                        .execute(&mut *tx)
                        .await?;
                }
                "model" => {
                    let m = new.models.get(a).ok_or_else(missing)?;
                    let sql = if create {
                        "INSERT INTO models (spec, created_at_ms, updated_at_ms, name) VALUES ($1, $2, $3, $4)"
                    } else {
                        "UPDATE models SET spec = $1, created_at_ms = $2, updated_at_ms = $3 WHERE name = $4"
                    };
                    sqlx::query(sql)
                        .bind(json(&m.spec)?)
                        .bind(m.created_at_ms)
                        .bind(m.updated_at_ms)
                        .bind(&m.name)
                        .execute(&mut *tx)
                        .await?;
                }
                "backend" => {
                    let be = new
                        .models
                        .get(a)
                        .and_then(|m| m.backends.get(b))
                        .ok_or_else(missing)?;
                    let sql = if create {
                        "INSERT INTO backends (provider, spec, created_at_ms, updated_at_ms, model, name) VALUES ($1, $2, $3, $4, $5, $6)"
                    } else {
                        "UPDATE backends SET provider = $1, spec = $2, created_at_ms = $3, updated_at_ms = $4 WHERE model = $5 AND name = $6"
                    };
                    sqlx::query(sql)
                        .bind(&be.spec.provider)
                        .bind(json(&be.spec)?)
                        .bind(be.created_at_ms)
                        .bind(be.updated_at_ms)
                        .bind(a)
                        .bind(b)
                        .execute(&mut *tx)
                        .await?;
                }
                "limit" => {
                    let l = new.limits.get(a).ok_or_else(missing)?;
                    let sql = if create {
                        "INSERT INTO limits (scope, spec, created_at_ms, updated_at_ms, name) VALUES ($1, $2, $3, $4, $5)"
                    } else {
                        "UPDATE limits SET scope = $1, spec = $2, created_at_ms = $3, updated_at_ms = $4 WHERE name = $5"
                    };
                    sqlx::query(sql)
                        .bind(&l.spec.scope)
                        .bind(json(&l.spec)?)
                        .bind(l.created_at_ms)
                        .bind(l.updated_at_ms)
                        .bind(&l.name)
                        .execute(&mut *tx)
                        .await?;
                    // Counted in another unit, scope or window, past consumption means
                    // nothing for the new definition: its ledger starts again.
                    if c.fields
                        .iter()
                        .any(|f| matches!(f.as_str(), "scope" | "kind" | "window"))
                    {
                        sqlx::query("DELETE FROM limit_ledger WHERE limit_name = $1")
                            .bind(&l.name)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                _ => {
                    let k = new.keys.get(a).ok_or_else(missing)?;
                    if create {
                        sqlx::query(
                            "INSERT INTO api_keys (id, name, key_hash, prefix, enabled, revoked, expires_at_ms, spec, created_at_ms, team) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        )
                        .bind(&k.id)
                        .bind(&k.name)
                        .bind(&k.key_hash)
                        .bind(&k.prefix)
                        .bind(i64::from(k.spec.enabled))
                        .bind(i64::from(k.spec.revoked))
                        .bind(k.spec.expires_at_ms)
                        .bind(json(&k.spec)?)
                        .bind(k.created_at_ms)
                        .bind(&k.spec.team)
                        .execute(&mut *tx)
                        .await?;
                    } else {
                        sqlx::query(
                            "UPDATE api_keys SET enabled = $1, revoked = $2, expires_at_ms = $3, spec = $4, team = $5 WHERE name = $6",
                        )
                        .bind(i64::from(k.spec.enabled))
                        .bind(i64::from(k.spec.revoked))
                        .bind(k.spec.expires_at_ms)
                        .bind(json(&k.spec)?)
                        .bind(&k.spec.team)
                        .bind(&k.name)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Store a worker report idempotently (ids are unique) in one transaction.
    /// Returns (usage stored, usage duplicates, health stored, health duplicates).
    ///
    /// Records go in with multi-row INSERTs ([`insert_chunks`]): one statement per
    /// row was one round trip to sqlx's SQLite worker thread each, most of control's
    /// CPU per usage record. An id seen earlier in the same report is dropped here
    /// (the first one is stored, as with row-by-row inserts); an id already stored or
    /// already rolled up is skipped by the database, so `rows_affected` is the stored
    /// count and the rest are duplicates.
    pub async fn report(&self, req: &pb::ReportRequest) -> Result<(u32, u32, u32, u32), Error> {
        if req.usage.iter().any(|u| u.id.is_empty()) {
            return Err(Error::InvalidArgument("usage record: id is required".into()));
        }
        if req.health.iter().any(|h| h.id.is_empty()) {
            return Err(Error::InvalidArgument("health event: id is required".into()));
        }
        let t = Instant::now();
        let usage = first_of_each_id(&req.usage, |u| &u.id);
        let health = first_of_each_id(&req.health, |h| &h.id);
        let sql = ReportSql::get(self.kind);
        let mut tx = self.pool.begin().await?;
        let us = insert_chunks(&mut tx, &sql.usage, &usage, |q, u| {
            bind_usage(q, u, &req.worker_id)
        })
        .await?;
        let hs = insert_chunks(&mut tx, &sql.health, &health, |q, h| {
            bind_health(q, h, &req.worker_id)
        })
        .await?;
        tx.commit().await?;
        self.metrics.observe_db(t.elapsed());
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (us, hs) = (count(us), count(hs));
        Ok((
            us,
            count(req.usage.len()).saturating_sub(us),
            hs,
            count(req.health.len()).saturating_sub(hs),
        ))
    }

    /// Upsert limit ledger rows in one transaction. `used` and `refused` only grow (a
    /// row written late, or by another control replica, never lowers them).
    pub async fn save_ledger(&self, rows: &[crate::limits::LedgerRow], now: i64) -> Result<(), Error> {
        let t = Instant::now();
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO limit_ledger (limit_name, window_start_ms, instance_id, worker_id, used, refused, ceiling, expires_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (limit_name, window_start_ms, instance_id) DO UPDATE SET worker_id = excluded.worker_id, \
                 used = CASE WHEN excluded.used > limit_ledger.used THEN excluded.used ELSE limit_ledger.used END, \
                 refused = CASE WHEN excluded.refused > limit_ledger.refused THEN excluded.refused ELSE limit_ledger.refused END, \
                 ceiling = excluded.ceiling, expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&r.limit)
            .bind(r.window_start_ms)
            .bind(&r.instance_id)
            .bind(&r.worker_id)
            .bind(to_i64(r.used))
            .bind(to_i64(r.refused))
            .bind(to_i64(r.ceiling))
            .bind(r.expires_at_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.metrics.observe_db(t.elapsed());
        Ok(())
    }

    /// Ledger rows of windows that started at or after `since_ms`.
    pub async fn load_ledger(&self, since_ms: i64) -> Result<Vec<crate::limits::LedgerRow>, Error> {
        let rows = sqlx::query(
            "SELECT limit_name, window_start_ms, instance_id, worker_id, used, refused, ceiling, expires_at_ms \
             FROM limit_ledger WHERE window_start_ms >= $1",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        rows.iter()
            .map(|r| {
                Ok(crate::limits::LedgerRow {
                    limit: r.try_get("limit_name")?,
                    window_start_ms: r.try_get("window_start_ms")?,
                    instance_id: r.try_get("instance_id")?,
                    worker_id: r.try_get("worker_id")?,
                    used: u(r.try_get("used")?),
                    refused: u(r.try_get("refused")?),
                    ceiling: u(r.try_get("ceiling")?),
                    expires_at_ms: r.try_get("expires_at_ms")?,
                })
            })
            .collect()
    }

    /// Delete ledger rows of windows that started before `before_ms`.
    pub async fn prune_ledger(&self, before_ms: i64) -> Result<u64, Error> {
        Ok(sqlx::query("DELETE FROM limit_ledger WHERE window_start_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn save_worker(&self, w: &WorkerState) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO workers (worker_id, address, software_version, applied_version, applied_hash, last_seen_ms, connected_at_ms, rejected_version, rejected_reason, rejected_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (worker_id) DO UPDATE SET address = excluded.address, software_version = excluded.software_version, \
             applied_version = excluded.applied_version, applied_hash = excluded.applied_hash, last_seen_ms = excluded.last_seen_ms, \
             connected_at_ms = excluded.connected_at_ms, rejected_version = excluded.rejected_version, \
             rejected_reason = excluded.rejected_reason, rejected_at_ms = excluded.rejected_at_ms",
        )
        .bind(&w.worker_id)
        .bind(&w.address)
        .bind(&w.software_version)
        .bind(to_i64(w.applied_version))
        .bind(&w.applied_hash)
        .bind(w.last_seen_ms)
        .bind(w.connected_at_ms)
        .bind(to_i64(w.rejected_version))
        .bind(&w.rejected_reason)
        .bind(w.rejected_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn load_workers(&self) -> Result<Vec<WorkerState>, Error> {
        let rows = sqlx::query("SELECT worker_id, address, software_version, applied_version, applied_hash, last_seen_ms, connected_at_ms, rejected_version, rejected_reason, rejected_at_ms FROM workers")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkerState {
                    worker_id: r.try_get("worker_id")?,
                    address: r.try_get("address")?,
                    software_version: r.try_get("software_version")?,
                    applied_version: u64::try_from(r.try_get::<i64, _>("applied_version")?).unwrap_or(0),
                    applied_hash: r.try_get("applied_hash")?,
                    last_seen_ms: r.try_get("last_seen_ms")?,
                    connected_at_ms: r.try_get("connected_at_ms")?,
                    rejected_version: u64::try_from(r.try_get::<i64, _>("rejected_version")?).unwrap_or(0),
                    rejected_reason: r.try_get("rejected_reason")?,
                    rejected_at_ms: r.try_get("rejected_at_ms")?,
                    connections: 0,
                })
            })
            .collect()
    }
}

/// Row counts of the multi-row report INSERTs: full chunks of the first, then the rest
/// in powers of two. Each table then has eight statement texts, which stay in sqlx's
/// per-connection statement cache, instead of one per batch size. 100 usage rows bind
/// 2,500 values: far below SQLite's limit (32,766 since 3.32; the bundled SQLite is
/// newer) and Postgres's 65,535.
const CHUNK_ROWS: [usize; 8] = [100, 64, 32, 16, 8, 4, 2, 1];

/// The multi-row report INSERTs of one database, one text per entry of [`CHUNK_ROWS`].
/// The SQL is the same for both; only the placeholders differ ([`placeholders`]).
struct ReportSql {
    usage: Vec<String>,
    health: Vec<String>,
}

static SQLITE_REPORT_SQL: LazyLock<ReportSql> = LazyLock::new(|| ReportSql::new(DbKind::Sqlite));
static POSTGRES_REPORT_SQL: LazyLock<ReportSql> = LazyLock::new(|| ReportSql::new(DbKind::Postgres));

impl ReportSql {
    fn get(kind: DbKind) -> &'static ReportSql {
        match kind {
            DbKind::Sqlite => &SQLITE_REPORT_SQL,
            DbKind::Postgres => &POSTGRES_REPORT_SQL,
        }
    }

    /// `VALUES` names its columns `column1`, `column2`, ... on SQLite and on Postgres
    /// alike; the `WHERE` also keeps SQLite from reading `ON CONFLICT` as a join constraint.
    fn new(kind: DbKind) -> ReportSql {
        const USAGE: &str = "id, ts_ms, request_id, worker_id, key_id, key_name, model, backend, provider, credential, endpoint, status, stream, retries, latency_us, ttfb_us, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, outcome, cache_write_tokens, cost_nano, team";
        const HEALTH: &str =
            "id, ts_ms, worker_id, kind, model, backend, provider, credential, healthy, reason";
        let (nu, nh) = (USAGE.split(", ").count(), HEALTH.split(", ").count());
        let select = (1..=nu)
            .map(|i| format!("v.column{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        ReportSql {
            usage: CHUNK_ROWS
                .iter()
                .map(|&rows| {
                    format!(
                        "INSERT INTO usage_records ({USAGE}) SELECT {select} FROM (VALUES {}) AS v \
                         WHERE NOT EXISTS (SELECT 1 FROM usage_rolled_ids r WHERE r.id = v.column1) \
                         ON CONFLICT (id) DO NOTHING",
                        placeholders(kind, rows, nu)
                    )
                })
                .collect(),
            health: CHUNK_ROWS
                .iter()
                .map(|&rows| {
                    format!(
                        "INSERT INTO health_events ({HEALTH}) VALUES {} ON CONFLICT (id) DO NOTHING",
                        placeholders(kind, rows, nh)
                    )
                })
                .collect(),
        }
    }
}

/// `(p, ..., p), (p, ...), ...` for `rows` rows of `cols` columns: `$1`, `$2`, ... on
/// Postgres, anonymous `?` on SQLite. SQLite finds a named parameter's name by a linear
/// scan (`sqlite3_bind_parameter_name`, which sqlx calls for every parameter of every
/// execution), so `$N` costs O(n²) per statement: with 2,200 of them a 500-record report
/// took longer than with one statement per record. `?` is bound by position.
fn placeholders(kind: DbKind, rows: usize, cols: usize) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(rows * cols * 7);
    for r in 0..rows {
        s.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match kind {
                DbKind::Sqlite => s.push('?'),
                DbKind::Postgres => {
                    let _ = write!(s, "${}", r * cols + c + 1);
                }
            }
        }
        s.push(')');
    }
    s
}

/// The items whose id was not seen earlier in `items`, in order.
fn first_of_each_id<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<&T> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.iter().filter(|x| seen.insert(id(x))).collect()
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Insert `items` with the statements in `sql` (one per entry of [`CHUNK_ROWS`]),
/// `bind` adding one item's values; returns the number of rows inserted.
async fn insert_chunks<'q, T>(
    tx: &mut AnyConnection,
    sql: &'q [String],
    mut items: &[&'q T],
    bind: impl Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<usize, Error> {
    let mut stored = 0u64;
    while !items.is_empty() {
        // The largest chunk that fits (the last entry is 1).
        let i = CHUNK_ROWS
            .iter()
            .position(|&n| n <= items.len())
            .unwrap_or(CHUNK_ROWS.len() - 1);
        let (chunk, rest) = items.split_at(CHUNK_ROWS[i].min(items.len()));
        let q = chunk.iter().fold(sqlx::query(&sql[i]), |q, x| bind(q, x));
        stored += q.execute(&mut *tx).await?.rows_affected();
        items = rest;
    }
    Ok(usize::try_from(stored).unwrap_or(usize::MAX))
}

/// A record's own worker id, else the reporting worker's.
fn record_worker<'q>(own: &'q str, report_worker: &'q str) -> &'q str {
    if own.is_empty() {
        report_worker
    } else {
        own
    }
}

fn bind_usage<'q>(q: AnyQuery<'q>, u: &'q pb::UsageRecord, report_worker: &'q str) -> AnyQuery<'q> {
    let worker = record_worker(&u.worker_id, report_worker);
    q.bind(&u.id)
        .bind(u.ts_ms)
        .bind(&u.request_id)
        .bind(worker)
        .bind(&u.key_id)
        .bind(&u.key_name)
        .bind(&u.model)
        .bind(&u.backend)
        .bind(&u.provider)
        .bind(&u.credential)
        .bind(&u.endpoint)
        .bind(i64::from(u.status))
        .bind(i64::from(u.stream))
        .bind(i64::from(u.retries))
        .bind(to_i64(u.latency_us))
        .bind(to_i64(u.ttfb_us))
        .bind(to_i64(u.prompt_tokens))
        .bind(to_i64(u.completion_tokens))
        .bind(to_i64(u.total_tokens))
        .bind(to_i64(u.cached_tokens))
        .bind(to_i64(u.reasoning_tokens))
        .bind(&u.outcome)
        .bind(to_i64(u.cache_write_tokens))
        .bind(u.cost_nano.map(to_i64))
        .bind(&u.team)
}

fn bind_health<'q>(q: AnyQuery<'q>, h: &'q pb::HealthEvent, report_worker: &'q str) -> AnyQuery<'q> {
    let worker = record_worker(&h.worker_id, report_worker);
    q.bind(&h.id)
        .bind(h.ts_ms)
        .bind(worker)
        .bind(&h.kind)
        .bind(&h.model)
        .bind(&h.backend)
        .bind(&h.provider)
        .bind(&h.credential)
        .bind(i64::from(h.healthy))
        .bind(&h.reason)
}

async fn read_version(conn: &mut AnyConnection) -> Result<u64, Error> {
    let v: i64 = sqlx::query("SELECT value FROM meta WHERE key = 'version'")
        .fetch_one(&mut *conn)
        .await?
        .try_get("value")?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Read the whole config; credential secrets are decrypted.
pub(crate) async fn load_state(conn: &mut AnyConnection, keyring: &Keyring) -> Result<ConfigState, Error> {
    let mut s = ConfigState::default();
    for r in sqlx::query("SELECT name, spec, created_at_ms, updated_at_ms FROM providers")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.try_get("name")?;
        s.providers.insert(
            name.clone(),
            Provider {
                spec: provider_spec_from(&r.try_get::<String, _>("spec")?, keyring)?,
                name,
                credentials: Default::default(),
                created_at_ms: r.try_get("created_at_ms")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            },
        );
    }
    for r in sqlx::query(
        "SELECT provider, name, secret, key_version, spec, created_at_ms, updated_at_ms FROM credentials",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        let provider: String = r.try_get("provider")?;
        let name: String = r.try_get("name")?;
        let secret = keyring.open(&r.try_get::<String, _>("secret")?, r.try_get("key_version")?)?;
        if let Some(p) = s.providers.get_mut(&provider) {
            p.credentials.insert(
                name.clone(),
                Credential {
                    name,
                    secret: Secret::new(secret),
                    spec: unjson("credential", &r.try_get::<String, _>("spec")?)?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                },
            );
        }
    }
    for r in sqlx::query("SELECT name, spec, created_at_ms, updated_at_ms FROM models")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.try_get("name")?;
        s.models.insert(
            name.clone(),
            Model {
                spec: unjson("model", &r.try_get::<String, _>("spec")?)?,
                name,
                backends: Default::default(),
                created_at_ms: r.try_get("created_at_ms")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            },
        );
    }
    for r in sqlx::query("SELECT model, name, spec, created_at_ms, updated_at_ms FROM backends")
        .fetch_all(&mut *conn)
        .await?
    {
        let model: String = r.try_get("model")?;
        let name: String = r.try_get("name")?;
        if let Some(m) = s.models.get_mut(&model) {
            m.backends.insert(
                name.clone(),
                Backend {
                    name,
                    spec: unjson("backend", &r.try_get::<String, _>("spec")?)?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                },
            );
        }
    }
    for r in sqlx::query("SELECT id, name, key_hash, prefix, spec, created_at_ms FROM api_keys")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.try_get("name")?;
        s.keys.insert(
            name.clone(),
            ApiKey {
                id: r.try_get("id")?,
                name,
                key_hash: r.try_get("key_hash")?,
                prefix: r.try_get("prefix")?,
                spec: unjson("key", &r.try_get::<String, _>("spec")?)?,
                created_at_ms: r.try_get("created_at_ms")?,
            },
        );
    }
    for r in sqlx::query("SELECT name, spec, created_at_ms, updated_at_ms FROM limits")
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.try_get("name")?;
        s.limits.insert(
            name.clone(),
            Limit {
                spec: unjson("limit", &r.try_get::<String, _>("spec")?)?,
                name,
                created_at_ms: r.try_get("created_at_ms")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            },
        );
    }
    Ok(s)
}

/// Fill in timestamps: unchanged objects keep theirs, changed ones get `updated = now`,
/// new ones `created = updated = now`.
fn stamp(old: &ConfigState, new: &mut ConfigState, now: i64) {
    fn set(prev: Option<(i64, i64)>, same: bool, c: &mut i64, u: &mut i64, now: i64) {
        match prev {
            Some((pc, pu)) if same => (*c, *u) = (pc, pu),
            Some((pc, _)) => (*c, *u) = (pc, now),
            None => (*c, *u) = (now, now),
        }
    }
    for (name, p) in new.providers.iter_mut() {
        let op = old.providers.get(name);
        set(
            op.map(|o| (o.created_at_ms, o.updated_at_ms)),
            op.is_some_and(|o| o.spec == p.spec),
            &mut p.created_at_ms,
            &mut p.updated_at_ms,
            now,
        );
        for (cn, c) in p.credentials.iter_mut() {
            let oc = op.and_then(|o| o.credentials.get(cn));
            set(
                oc.map(|o| (o.created_at_ms, o.updated_at_ms)),
                oc.is_some_and(|o| o.spec == c.spec && o.secret == c.secret),
                &mut c.created_at_ms,
                &mut c.updated_at_ms,
                now,
            );
        }
    }
    for (name, m) in new.models.iter_mut() {
        let om = old.models.get(name);
        set(
            om.map(|o| (o.created_at_ms, o.updated_at_ms)),
            om.is_some_and(|o| o.spec == m.spec),
            &mut m.created_at_ms,
            &mut m.updated_at_ms,
            now,
        );
        for (bn, b) in m.backends.iter_mut() {
            let ob = om.and_then(|o| o.backends.get(bn));
            set(
                ob.map(|o| (o.created_at_ms, o.updated_at_ms)),
                ob.is_some_and(|o| o.spec == b.spec),
                &mut b.created_at_ms,
                &mut b.updated_at_ms,
                now,
            );
        }
    }
    for (name, k) in new.keys.iter_mut() {
        k.created_at_ms = old.keys.get(name).map_or(now, |o| o.created_at_ms);
    }
    for (name, l) in new.limits.iter_mut() {
        let ol = old.limits.get(name);
        set(
            ol.map(|o| (o.created_at_ms, o.updated_at_ms)),
            ol.is_some_and(|o| o.spec == l.spec),
            &mut l.created_at_ms,
            &mut l.updated_at_ms,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_statements() {
        assert_eq!(placeholders(DbKind::Postgres, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(DbKind::Sqlite, 2, 2), "(?, ?), (?, ?)");
        let pg = ReportSql::get(DbKind::Postgres);
        assert_eq!(
            (pg.usage.len(), pg.health.len()),
            (CHUNK_ROWS.len(), CHUNK_ROWS.len())
        );
        // 25 columns: the last placeholder of a full chunk is 100 * 25.
        assert!(pg.usage[0].contains("v.column25 FROM (VALUES ($1, "));
        assert!(pg.usage[0].contains(", $2500)) AS v WHERE NOT EXISTS"));
        assert!(pg.health[7]
            .ends_with("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING"));
        let lite = ReportSql::get(DbKind::Sqlite);
        assert_eq!(lite.usage[0].matches('?').count(), 2500);
        assert!(!lite.usage[0].contains('$'));
        let ids = ["a", "b", "a", "c", "b"];
        let firsts: Vec<_> = first_of_each_id(&ids, |s| s).into_iter().copied().collect();
        assert_eq!(firsts, ["a", "b", "c"]);
    }
}
