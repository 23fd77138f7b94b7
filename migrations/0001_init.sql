-- Switchyard control-plane schema. Portable SQL: runs unchanged on SQLite and Postgres
-- (TEXT ids, BIGINT integers and epoch-ms timestamps, BIGINT 0/1 booleans).
-- Object settings that are not used for lookups or references live in a JSON `spec`
-- column, so adding a setting needs no migration.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('version', 0);

CREATE TABLE providers (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE credentials (
    provider TEXT NOT NULL REFERENCES providers (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- plaintext when key_version = 0, else base64(nonce || AES-256-GCM ciphertext)
    secret TEXT NOT NULL,
    key_version BIGINT NOT NULL,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (provider, name)
);

CREATE TABLE models (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE backends (
    model TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    provider TEXT NOT NULL REFERENCES providers (name),
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (model, name)
);
CREATE INDEX backends_provider ON backends (provider);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    revoked BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    spec TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    software_version TEXT NOT NULL,
    applied_version BIGINT NOT NULL,
    applied_hash TEXT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    connected_at_ms BIGINT NOT NULL,
    rejected_version BIGINT NOT NULL,
    rejected_reason TEXT NOT NULL,
    rejected_at_ms BIGINT NOT NULL
);

CREATE TABLE health_events (
    id TEXT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    worker_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    backend TEXT NOT NULL,
    provider TEXT NOT NULL,
    credential TEXT NOT NULL,
    healthy BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX health_events_ts ON health_events (ts_ms);
CREATE INDEX health_events_backend ON health_events (model, backend);

CREATE TABLE usage_records (
    id TEXT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    backend TEXT NOT NULL,
    provider TEXT NOT NULL,
    credential TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    retries BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    ttfb_us BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX usage_records_ts ON usage_records (ts_ms);
CREATE INDEX usage_records_key ON usage_records (key_name, ts_ms);
CREATE INDEX usage_records_model ON usage_records (model, ts_ms);
CREATE INDEX usage_records_backend ON usage_records (backend, ts_ms);
