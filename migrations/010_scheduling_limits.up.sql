-- 010: Phase 2 scheduling. Limits per job type and per tenant (how many may run at once, how
-- many may start per second) and fair-share weights per tenant. PostgreSQL holds them (the
-- source of truth); the dispatch index mirrors them into Redis, where the acquire script
-- enforces them. complete_job also returns the job type and tenant of the jobs a completion
-- releases, so that they are queued under their type's and tenant's limits.

CREATE TABLE job_limits (
    scope text NOT NULL CHECK (scope IN ('job_type', 'tenant')),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    max_running integer CHECK (max_running > 0),
    rate_per_s double precision CHECK (rate_per_s > 0),
    burst integer CHECK (burst > 0),
    weight integer CHECK (weight BETWEEN 1 AND 1000),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (scope, name),
    CHECK (weight IS NULL OR scope = 'tenant'),
    CHECK (burst IS NULL OR rate_per_s IS NOT NULL)
);

-- the PostgreSQL fallback counts running jobs per type and tenant
CREATE INDEX idx_jobs_processing_type_tenant ON jobs (job_type, tenant)
    WHERE status = 'PROCESSING';

DROP FUNCTION complete_job(uuid, bigint, jsonb);

CREATE FUNCTION complete_job(p_id uuid, p_token bigint, p_result jsonb)
RETURNS TABLE (ok boolean, job_status text, released_id uuid, priority smallint,
               required_capability text, delay_ms bigint, job_type text, tenant text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_worker text;
    v_status text;
    v_waiting uuid[];
BEGIN
    UPDATE jobs j
    SET status = 'COMPLETED', completed_at = clock_timestamp(), result = p_result,
        lease_token = NULL, lease_expires_at = NULL
    WHERE j.id = p_id AND j.lease_token = p_token AND j.status = 'PROCESSING'
    RETURNING j.worker_id INTO v_worker;
    IF NOT FOUND THEN
        SELECT j.status INTO v_status FROM jobs j WHERE j.id = p_id;
        RETURN QUERY SELECT false, v_status, NULL::uuid, NULL::smallint, NULL::text,
                            NULL::bigint, NULL::text, NULL::text;
        RETURN;
    END IF;
    UPDATE job_executions e
    SET status = 'COMPLETED', finished_at = clock_timestamp(),
        duration_ms = extract(epoch FROM clock_timestamp() - e.started_at) * 1000
    WHERE e.lease_token = p_token;
    UPDATE workers w SET jobs_completed = w.jobs_completed + 1 WHERE w.id = v_worker;
    SELECT array_agg(x.id) INTO v_waiting FROM (
        SELECT j.id FROM jobs j JOIN job_dependencies d ON d.job_id = j.id
        WHERE d.depends_on_job_id = p_id AND j.status = 'WAITING'
        ORDER BY j.id FOR UPDATE OF j) x;
    IF v_waiting IS NULL THEN
        RETURN QUERY SELECT true, 'COMPLETED'::text, NULL::uuid, NULL::smallint, NULL::text,
                            NULL::bigint, NULL::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY
    WITH released AS (
        UPDATE jobs j
        SET status = 'PENDING', run_at = greatest(j.run_at, clock_timestamp())
        WHERE j.id = ANY (v_waiting) AND j.status = 'WAITING'
          AND NOT EXISTS (
              SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on_job_id
              WHERE d.job_id = j.id AND p.status <> 'COMPLETED')
        RETURNING j.id, j.priority, j.required_capability,
                  greatest(0, ceil(extract(epoch FROM j.run_at - clock_timestamp()) * 1000))::bigint
                      AS delay_ms, j.job_type, j.tenant
    )
    SELECT true, 'COMPLETED'::text, r.id, r.priority, r.required_capability, r.delay_ms,
           r.job_type, r.tenant
    FROM released r
    UNION ALL
    SELECT true, 'COMPLETED'::text, NULL, NULL, NULL, NULL, NULL, NULL
    WHERE NOT EXISTS (SELECT 1 FROM released);
END;
$$;
