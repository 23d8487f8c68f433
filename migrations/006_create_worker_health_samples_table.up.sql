-- 006: worker_health_samples, one row per worker heartbeat: the predictor's training data.

CREATE TABLE worker_health_samples (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker_id        text        NOT NULL,
    sampled_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    rss_bytes        bigint      NOT NULL CHECK (rss_bytes >= 0),
    cpu_percent      real        NOT NULL CHECK (cpu_percent >= 0),
    loop_lag_ms      real        NOT NULL CHECK (loop_lag_ms >= 0),
    in_flight        integer     NOT NULL CHECK (in_flight >= 0),
    completed        bigint      NOT NULL CHECK (completed >= 0),
    failed           bigint      NOT NULL CHECK (failed >= 0),
    duration_p50_ms  real,
    duration_p99_ms  real,
    error_rate       real        NOT NULL CHECK (error_rate BETWEEN 0 AND 1),
    extra            jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- A worker's recent samples (supervisor, feature windows of the predictor).
CREATE INDEX idx_health_worker_sampled ON worker_health_samples (worker_id, sampled_at);
-- Export of a run's samples by time range.
CREATE INDEX idx_health_sampled_at ON worker_health_samples (sampled_at);
