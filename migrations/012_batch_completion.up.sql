-- 012: complete_jobs, many completions as a few set-based statements. Calling complete_job
-- once per row (a LATERAL join over unnest) ran five statements per job and cost ~3x more
-- PostgreSQL time per completion than this does for batches of 10. Same rules as
-- complete_job: only the current token of a PROCESSING job is accepted; the execution row
-- is closed and the worker's count raised; WAITING dependents are locked first and released
-- by a later statement, which (each plpgsql statement taking a fresh snapshot) sees every
-- concurrent completion that committed meanwhile (no diamond left WAITING).
--
-- One row per completion `ord` (1-based position in the arrays): ok, and job_status when
-- refused (NULL: no such job). A released dependent adds a row with released_id, under the
-- ord of a completion it waited on; a completion's first row is always its own.

CREATE FUNCTION complete_jobs(p_ids uuid[], p_tokens bigint[], p_results jsonb[])
RETURNS TABLE (ord bigint, ok boolean, job_status text, released_id uuid, priority smallint,
               required_capability text, delay_ms bigint, job_type text, tenant text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- Every row is reached by key. Statistics taken while the tables were small (a fresh schema,
-- few executions) would otherwise plan sequential scans of job_executions that grow with
-- history; this makes the planner take the indexes whatever the statistics say.
SET enable_seqscan = off
AS $$
DECLARE
    v_ids uuid[];
    v_ords bigint[];
    v_waiting uuid[];
BEGIN
    WITH u AS (
        SELECT * FROM unnest(p_ids, p_tokens, p_results) WITH ORDINALITY
            AS u(id, token, result, ord)
        ORDER BY u.id  -- locked in id order as a rule: two batches wait rather than deadlock
    ), done AS (
        UPDATE jobs j
        SET status = 'COMPLETED', completed_at = clock_timestamp(), result = u.result,
            lease_token = NULL, lease_expires_at = NULL
        FROM u
        WHERE j.id = ANY (p_ids) AND j.id = u.id AND j.lease_token = u.token
          AND (j.status = 'PROCESSING') IS TRUE
        RETURNING j.id, j.worker_id, u.token, u.ord
    ), closed AS (
        UPDATE job_executions e
        SET status = 'COMPLETED', finished_at = clock_timestamp(),
            duration_ms = extract(epoch FROM clock_timestamp() - e.started_at) * 1000
        FROM done WHERE e.lease_token = ANY (p_tokens) AND e.lease_token = done.token
    ), counted AS (
        UPDATE workers w SET jobs_completed = w.jobs_completed + c.n
        FROM (SELECT done.worker_id, count(*) AS n FROM done GROUP BY done.worker_id) c
        WHERE w.id = c.worker_id
    )
    SELECT array_agg(done.id), array_agg(done.ord) INTO v_ids, v_ords FROM done;

    RETURN QUERY  -- the refused ones, with the status that refused them
    SELECT u.ord, false, j.status, NULL::uuid, NULL::smallint, NULL::text, NULL::bigint,
           NULL::text, NULL::text
    FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
    LEFT JOIN jobs j ON j.id = u.id
    WHERE u.ord <> ALL (coalesce(v_ords, '{}'));
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT o.ord, true, 'COMPLETED'::text, NULL::uuid, NULL::smallint, NULL::text,
           NULL::bigint, NULL::text, NULL::text
    FROM unnest(v_ords) AS o(ord);

    SELECT array_agg(x.id) INTO v_waiting FROM (
        SELECT j.id FROM jobs j
        WHERE j.id IN (SELECT d.job_id FROM job_dependencies d
                       WHERE d.depends_on_job_id = ANY (v_ids))
          AND j.status = 'WAITING'
        ORDER BY j.id FOR UPDATE OF j) x;
    IF v_waiting IS NULL THEN
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
    SELECT (SELECT min(o.ord) FROM job_dependencies d
            JOIN unnest(v_ids, v_ords) AS o(id, ord) ON o.id = d.depends_on_job_id
            WHERE d.job_id = r.id),
           true, 'COMPLETED'::text, r.id, r.priority, r.required_capability, r.delay_ms,
           r.job_type, r.tenant
    FROM released r;
END;
$$;
