-- 001: jobs, the source of truth for every job's state (invariant 1).
-- Runs with search_path set to the configured schema (default gap006).

CREATE SEQUENCE lease_token_seq AS bigint;  -- fencing tokens: one per acquisition, increasing

CREATE TABLE jobs (
    id                  uuid        PRIMARY KEY,
    job_type            text        NOT NULL CHECK (length(job_type) BETWEEN 1 AND 200),
    payload             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    priority            smallint    NOT NULL DEFAULT 3 CHECK (priority BETWEEN 1 AND 5),
    status              text        NOT NULL DEFAULT 'PENDING'
        CHECK (status IN ('WAITING', 'PENDING', 'PROCESSING', 'COMPLETED', 'DEAD', 'CANCELLED')),
    required_capability text,
    idempotency_key     text,
    idempotency_hash    text,
    retry_count         integer     NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    max_retries         integer     NOT NULL DEFAULT 5 CHECK (max_retries BETWEEN 0 AND 100),
    timeout_s           double precision NOT NULL DEFAULT 300 CHECK (timeout_s > 0),
    run_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at          timestamptz,
    completed_at        timestamptz,
    worker_id           text,
    lease_token         bigint,
    lease_expires_at    timestamptz,
    cancel_requested_at timestamptz,
    cancel_reason       text,
    result              jsonb,
    last_error          text,
    -- A leased job always has its worker, token and deadline; nothing else has a token.
    CONSTRAINT jobs_lease_consistent CHECK (
        (status = 'PROCESSING') = (lease_token IS NOT NULL AND worker_id IS NOT NULL
                                   AND lease_expires_at IS NOT NULL)
    ),
    CONSTRAINT jobs_completed_has_time CHECK (
        status NOT IN ('COMPLETED', 'DEAD', 'CANCELLED') OR completed_at IS NOT NULL
    )
);

-- get_runnable_jobs / PostgreSQL fallback acquisition: best priority first, FIFO within it.
CREATE INDEX idx_jobs_runnable ON jobs (priority DESC, run_at, created_at) WHERE status = 'PENDING';
-- Counts and listings by status (metrics, `jobs list --status`).
CREATE INDEX idx_jobs_status ON jobs (status);
-- Reconciler: leases past their deadline.
CREATE INDEX idx_jobs_lease_expiry ON jobs (lease_expires_at) WHERE status = 'PROCESSING';
-- Create with an idempotency key: one job per key.
CREATE UNIQUE INDEX idx_jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Release of a dead worker's leases.
CREATE INDEX idx_jobs_worker_processing ON jobs (worker_id) WHERE status = 'PROCESSING';
-- Per-type throughput and failure metrics.
CREATE INDEX idx_jobs_type_status ON jobs (job_type, status);
-- Reports and exports over a time range of creation.
CREATE INDEX idx_jobs_created_at ON jobs (created_at);
-- Throughput over time and retention of finished jobs.
CREATE INDEX idx_jobs_completed_at ON jobs (completed_at) WHERE completed_at IS NOT NULL;

-- Keeps updated_at current on every UPDATE.
CREATE FUNCTION update_jobs_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;

CREATE TRIGGER trg_jobs_updated_at
    BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION update_jobs_updated_at();

-- Runnable jobs for a worker with the given capabilities, best first, rows locked with
-- SKIP LOCKED so concurrent callers never receive the same job. The lock lasts until the
-- caller's transaction ends: call it inside the transaction that leases the rows.
CREATE FUNCTION get_runnable_jobs(p_capabilities text[], p_limit integer)
RETURNS SETOF jobs
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT *
    FROM jobs
    WHERE status = 'PENDING'
      AND run_at <= clock_timestamp()
      AND (required_capability IS NULL OR required_capability = ANY (p_capabilities))
    ORDER BY priority DESC, run_at, created_at
    LIMIT p_limit
    FOR UPDATE SKIP LOCKED
$$;
