-- 008: priority inheritance. A job that a higher-priority job waits on (directly or through a
-- chain) runs at the highest priority among the WAITING jobs that wait on it, so a
-- low-priority job cannot hold a high-priority DAG back. `priority` stays the priority a job
-- is dispatched at (every queue, index and reader keeps working); `base_priority` keeps the
-- job's own priority while an inherited one is higher, and is NULL otherwise.

ALTER TABLE jobs ADD COLUMN base_priority smallint CHECK (base_priority BETWEEN 1 AND 5);

-- Recompute the inherited priority of every unfinished job that the seeds wait on, directly
-- or through a chain. Call it with the new jobs of a create (their dependencies may rise) or
-- with cancelled jobs (their dependencies may fall back). Returns the jobs whose priority
-- changed; PENDING ones must be moved to their new queue in Redis.
-- With raise_only, a priority never falls: two creates racing on a shared dependency then
-- cannot undo each other's raise (each UPDATE re-reads the row it waited for).
CREATE FUNCTION inherit_priority(p_seeds uuid[], p_raise_only boolean)
RETURNS TABLE (id uuid, status text, priority smallint, required_capability text)
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    WITH RECURSIVE up(id) AS (
        SELECT d.depends_on_job_id FROM job_dependencies d
        JOIN jobs a ON a.id = d.depends_on_job_id
        WHERE d.job_id = ANY (p_seeds) AND a.status IN ('WAITING', 'PENDING', 'PROCESSING')
        UNION
        SELECT d.depends_on_job_id FROM job_dependencies d
        JOIN up ON d.job_id = up.id
        JOIN jobs a ON a.id = d.depends_on_job_id
        WHERE a.status IN ('WAITING', 'PENDING', 'PROCESSING')
    ), down(root, id) AS (
        SELECT up.id, up.id FROM up
        UNION
        SELECT down.root, d.job_id FROM down
        JOIN job_dependencies d ON d.depends_on_job_id = down.id
        JOIN jobs w ON w.id = d.job_id AND w.status = 'WAITING'
    ), wanted AS (
        SELECT down.root AS id, max(coalesce(j.base_priority, j.priority)) AS p
        FROM down JOIN jobs j ON j.id = down.id
        GROUP BY down.root
    )
    UPDATE jobs j
    SET priority = CASE WHEN p_raise_only THEN greatest(j.priority, w.p) ELSE w.p END,
        base_priority = CASE
            WHEN (CASE WHEN p_raise_only THEN greatest(j.priority, w.p) ELSE w.p END)
                 = coalesce(j.base_priority, j.priority) THEN NULL
            ELSE coalesce(j.base_priority, j.priority) END
    FROM wanted w
    WHERE j.id = w.id AND j.status IN ('WAITING', 'PENDING', 'PROCESSING')
      AND j.priority <> (CASE WHEN p_raise_only THEN greatest(j.priority, w.p) ELSE w.p END)
    RETURNING j.id, j.status, j.priority, j.required_capability;
$$;
