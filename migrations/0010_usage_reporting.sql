-- Usage and health reporting (issue 5): indexes for the Admin queries, and the
-- hourly roll-up that keeps usage older than the raw-record retention.

CREATE INDEX usage_records_worker ON usage_records (worker_id, ts_ms);
CREATE INDEX usage_records_provider ON usage_records (provider, ts_ms);
CREATE INDEX usage_records_credential ON usage_records (credential, ts_ms);
CREATE INDEX health_events_target ON health_events (kind, model, backend, provider, credential, worker_id, ts_ms);
CREATE INDEX health_events_provider ON health_events (provider, ts_ms);

-- One row per hour and group. Rows are only ever added to (upsert) by the roll-up,
-- which deletes the raw records it summed in the same transaction.
CREATE TABLE usage_hourly (
    hour_ms BIGINT NOT NULL,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    backend TEXT NOT NULL,
    provider TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    credential TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    retries BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    latency_us_sum BIGINT NOT NULL,
    latency_us_max BIGINT NOT NULL,
    PRIMARY KEY (hour_ms, key_name, model, backend, provider, worker_id, credential)
);
CREATE INDEX usage_hourly_key ON usage_hourly (key_name, hour_ms);
CREATE INDEX usage_hourly_model ON usage_hourly (model, hour_ms);

-- Ids of raw records that were rolled up, kept for another retention period, so a
-- batch resent after its records were rolled up is still recognised as a duplicate.
CREATE TABLE usage_rolled_ids (
    id TEXT PRIMARY KEY,
    rolled_at_ms BIGINT NOT NULL
);
CREATE INDEX usage_rolled_ids_at ON usage_rolled_ids (rolled_at_ms);
