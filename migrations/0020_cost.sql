-- Money (issue 18): cache-write tokens apart from cached reads, and each record's cost
-- in nano-units of the currency, computed by the worker with the price of the snapshot
-- the request ran under. A NULL cost is an unpriced record (tokens, but no price):
-- unknown, never free. Records stored before this migration are unpriced.

ALTER TABLE usage_records ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN cost_nano BIGINT;

ALTER TABLE usage_hourly ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN cost_nano BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN unpriced_requests BIGINT NOT NULL DEFAULT 0;
