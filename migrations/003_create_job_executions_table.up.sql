-- 003: job_executions, one audit row per acquisition (attempt), closed by its outcome.

CREATE TABLE job_executions (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    worker_id    text        NOT NULL,
    attempt      integer     NOT NULL CHECK (attempt >= 1),
    lease_token  bigint      NOT NULL,
    acquired_via text        NOT NULL DEFAULT 'redis' CHECK (acquired_via IN ('redis', 'postgres')),
    status       text        NOT NULL DEFAULT 'RUNNING'
        CHECK (status IN ('RUNNING', 'COMPLETED', 'FAILED', 'TIMED_OUT', 'LEASE_EXPIRED',
                          'CANCELLED', 'RELEASED')),
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    duration_ms  double precision CHECK (duration_ms >= 0),
    error        text,
    CONSTRAINT executions_closed_consistent CHECK ((status = 'RUNNING') = (finished_at IS NULL))
);

-- A job's attempts in order (job detail, the invariant checker).
CREATE INDEX idx_executions_job_attempt ON job_executions (job_id, attempt);
-- A worker's history (health metrics, release on death).
CREATE INDEX idx_executions_worker_started ON job_executions (worker_id, started_at);
-- Closing the open row of a lease: one row per fencing token.
CREATE UNIQUE INDEX idx_executions_lease_token ON job_executions (lease_token);
-- Reports over time.
CREATE INDEX idx_executions_started_at ON job_executions (started_at);
-- Open executions (what is running now).
CREATE INDEX idx_executions_running ON job_executions (job_id) WHERE status = 'RUNNING';
