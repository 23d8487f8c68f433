-- 002: workers, the registry of worker processes and their liveness as PostgreSQL sees it.

CREATE TABLE workers (
    id                text        PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    hostname          text        NOT NULL DEFAULT '',
    pid               integer,
    capabilities      text[]      NOT NULL DEFAULT '{}',
    concurrency       integer     NOT NULL DEFAULT 1 CHECK (concurrency BETWEEN 1 AND 1000),
    status            text        NOT NULL DEFAULT 'ACTIVE'
        CHECK (status IN ('ACTIVE', 'DRAINING', 'STOPPED', 'STALE', 'FAILED')),
    registered_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    stopped_at        timestamptz,
    failure_reason    text,
    jobs_completed    bigint      NOT NULL DEFAULT 0,
    jobs_failed       bigint      NOT NULL DEFAULT 0,
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- mark_stale_workers and the supervisor's liveness scan: live workers by heartbeat age.
CREATE INDEX idx_workers_status_heartbeat ON workers (status, last_heartbeat_at);
-- Capability matching: which workers can serve a job type.
CREATE INDEX idx_workers_capabilities ON workers USING gin (capabilities);
-- Listing workers by age (lifespan metrics, `workers list`).
CREATE INDEX idx_workers_registered_at ON workers (registered_at);

-- Marks ACTIVE/DRAINING workers whose PostgreSQL heartbeat is older than p_timeout_s as STALE
-- and returns their ids. Uses the PostgreSQL clock only (invariant 6).
CREATE FUNCTION mark_stale_workers(p_timeout_s double precision)
RETURNS TABLE (worker_id text)
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    UPDATE workers
    SET status = 'STALE',
        failure_reason = coalesce(failure_reason, 'heartbeat older than ' || p_timeout_s || ' s')
    WHERE status IN ('ACTIVE', 'DRAINING')
      AND last_heartbeat_at < clock_timestamp() - make_interval(secs => p_timeout_s)
    RETURNING id
$$;
