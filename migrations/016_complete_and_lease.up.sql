-- 016: a worker's completions and its next lease in one statement and one transaction. A
-- worker reports the jobs that just ended and fills the slots they freed at the same moment;
-- as two statements that is two round trips and two commits per cycle, and with a few slots
-- per worker process the per-statement cost (the call, the commit) is most of PostgreSQL's
-- share of a job (benchmarks/completion_cost.py; docs/performance.md). The rules are those of
-- complete_jobs (012) and lease_jobs (015), called in that order; the completions touch only
-- the worker's own leased jobs, the lease only PENDING ones, so neither waits on the other.
--
-- Rows: kind 'c' carries a complete_jobs row (ord, ok, job_status, released_id, priority,
-- required_capability, delay_ms, job_type, tenant); kind 'l' a lease_jobs row (id,
-- worker_id, job_type, payload, priority, timeout_s, lease_token, retry_count,
-- required_capability). Columns of the other kind are NULL.

CREATE FUNCTION complete_and_lease(p_done uuid[], p_tokens bigint[], p_results jsonb[],
                                   p_ids uuid[], p_workers text[], p_lease_s double precision,
                                   p_via text)
RETURNS TABLE (kind text, ord bigint, ok boolean, job_status text, released_id uuid,
               priority smallint, required_capability text, delay_ms bigint, job_type text,
               tenant text, id uuid, worker_id text, payload jsonb, timeout_s double precision,
               lease_token bigint, retry_count integer)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF cardinality(p_done) > 0 THEN
        RETURN QUERY
        SELECT 'c'::text, c.ord, c.ok, c.job_status, c.released_id, c.priority,
               c.required_capability, c.delay_ms, c.job_type, c.tenant, NULL::uuid,
               NULL::text, NULL::jsonb, NULL::double precision, NULL::bigint, NULL::integer
        FROM complete_jobs(p_done, p_tokens, p_results) c;
    END IF;
    IF cardinality(p_ids) > 0 THEN
        RETURN QUERY
        SELECT 'l'::text, NULL::bigint, NULL::boolean, NULL::text, NULL::uuid, l.priority,
               l.required_capability, NULL::bigint, l.job_type, NULL::text, l.id,
               l.worker_id, l.payload, l.timeout_s, l.lease_token, l.retry_count
        FROM lease_jobs(p_ids, p_workers, p_lease_s, p_via) l;
    END IF;
END $$;
