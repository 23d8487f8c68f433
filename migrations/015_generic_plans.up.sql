-- 015: the statements of a lease and of a completion are planned once per session.
-- Left to choose, PostgreSQL planned them afresh on every call: with the ids passed as arrays,
-- each call's own plan looked cheaper than the shared one, so the shared one was never kept,
-- and that planning was most of a small batch's cost (a worker with ten slots leases and
-- completes about five jobs per statement). Every row is reached by key (migration 012 and
-- the lease's `IS TRUE` status test), so the shared plans are the ones the calls chose.

ALTER FUNCTION complete_jobs(uuid[], bigint[], jsonb[]) SET plan_cache_mode = force_generic_plan;

-- The lease of popped jobs (it was a statement of the service's own, queries.sql lease_jobs):
-- each id to its worker, a new fencing token each, and the execution row opened, in one call.
CREATE FUNCTION lease_jobs(p_ids uuid[], p_workers text[], p_lease_s double precision,
                           p_via text)
RETURNS TABLE (id uuid, worker_id text, job_type text, payload jsonb, priority smallint,
               timeout_s double precision, lease_token bigint, retry_count integer,
               required_capability text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH leased AS (
        UPDATE jobs j
        SET status = 'PROCESSING', worker_id = p_workers[array_position(p_ids, j.id)],
            lease_token = nextval('lease_token_seq'),
            lease_expires_at = clock_timestamp() + make_interval(secs => p_lease_s),
            started_at = coalesce(j.started_at, clock_timestamp())
        -- `IS TRUE`: idx_jobs_status cannot serve it, so the ids are looked up by key
        WHERE j.id = ANY (p_ids) AND (j.status = 'PENDING') IS TRUE
          AND j.cancel_requested_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM workers w  -- a quarantined worker gets no lease
                          WHERE w.id = p_workers[array_position(p_ids, j.id)]
                            AND w.status = 'QUARANTINED')
        RETURNING j.id, j.worker_id, j.job_type, j.payload, j.priority, j.timeout_s,
                  j.lease_token, j.retry_count, j.required_capability
    ), opened AS (
        INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, acquired_via)
        SELECT l.id, l.worker_id, l.retry_count + 1, l.lease_token, p_via FROM leased l
    )
    SELECT * FROM leased;
END $$;
