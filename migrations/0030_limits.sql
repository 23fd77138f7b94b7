-- Limits and teams (issue 18). Portable SQL, as 0001: runs unchanged on SQLite and Postgres.

-- A key's team (also in the key's spec, like `enabled`; the column is for lookups).
ALTER TABLE api_keys ADD COLUMN team TEXT NOT NULL DEFAULT '';

-- The team of the key a request ran under, when it ran. The hourly roll-up keeps one
-- team per (hour, key, ...) group: the key's team at the last roll-up of that hour.
ALTER TABLE usage_records ADD COLUMN team TEXT NOT NULL DEFAULT '';
ALTER TABLE usage_hourly ADD COLUMN team TEXT NOT NULL DEFAULT '';
CREATE INDEX usage_records_team ON usage_records (team, ts_ms);
CREATE INDEX usage_hourly_team ON usage_hourly (team, hour_ms);

-- Quotas. `scope` (`key:NAME`, `team:NAME`, `model:NAME`, `credential:PROVIDER/NAME`) is
-- a column for lookups; the rest of the definition is in `spec`.
CREATE TABLE limits (
    name TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- What each worker instance consumed of each limit in each window, as it last claimed
-- (absolute values, so a replayed claim is harmless), and the lease control granted it.
-- Written in batches by control's ledger task and read back at start, so a control
-- restart loses no consumption. Concurrency limits are not persisted.
CREATE TABLE limit_ledger (
    limit_name TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    used BIGINT NOT NULL,
    refused BIGINT NOT NULL,
    ceiling BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (limit_name, window_start_ms, instance_id)
);
CREATE INDEX limit_ledger_window ON limit_ledger (window_start_ms);
