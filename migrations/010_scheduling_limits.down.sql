-- 010 down: limits and weights are dropped; complete_job returns what migration 007 defined.
DROP FUNCTION IF EXISTS complete_job(uuid, bigint, jsonb);
DROP INDEX IF EXISTS idx_jobs_processing_type_tenant;
DROP TABLE IF EXISTS job_limits;

CREATE FUNCTION complete_job(p_id uuid, p_token bigint, p_result jsonb)
RETURNS TABLE (ok boolean, job_status text, released_id uuid, priority smallint,
               required_capability text, delay_ms bigint)
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
        RETURN QUERY SELECT false, v_status, NULL::uuid, NULL::smallint, NULL::text, NULL::bigint;
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
                            NULL::bigint;
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
                      AS delay_ms
    )
    SELECT true, 'COMPLETED'::text, r.id, r.priority, r.required_capability, r.delay_ms
    FROM released r
    UNION ALL
    SELECT true, 'COMPLETED'::text, NULL, NULL, NULL, NULL
    WHERE NOT EXISTS (SELECT 1 FROM released);
END;
$$;
