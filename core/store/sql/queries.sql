-- Named queries of the PostgreSQL job store. Each starts with "-- name: NAME".
-- They run with search_path set to the configured schema; timestamps come from the
-- PostgreSQL clock only (invariant 6).

-- name: insert_jobs
-- Batch insert from parallel arrays; an idempotency key already taken inserts nothing.
INSERT INTO jobs (id, job_type, payload, priority, status, required_capability,
                  idempotency_key, idempotency_hash, max_retries, timeout_s, run_at, tenant)
SELECT u.id, u.job_type, u.payload::jsonb, u.priority, u.status, u.cap, u.ikey, u.ihash,
       u.max_retries, u.timeout_s,
       coalesce(u.run_at, clock_timestamp() + make_interval(secs => u.delay_s)), u.tenant
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::integer[], $10::float8[], $11::timestamptz[],
            $12::float8[], $13::text[])
     AS u(id, job_type, payload, priority, status, cap, ikey, ihash, max_retries, timeout_s,
          run_at, delay_s, tenant)
ON CONFLICT ((coalesce(tenant, '')), idempotency_key) WHERE idempotency_key IS NOT NULL
DO NOTHING
RETURNING id, status, priority, required_capability, job_type, tenant,
          greatest(0, ceil(extract(epoch FROM run_at - clock_timestamp()) * 1000))::bigint
              AS delay_ms;

-- name: insert_job
-- One simple job (no idempotency key, no dependencies): a single row, no arrays to unnest.
INSERT INTO jobs (id, job_type, payload, priority, status, required_capability, max_retries,
                  timeout_s, run_at, tenant)
VALUES ($1, $2, $3::text::jsonb, $4, 'PENDING', $5, $6, $7,
        coalesce($8, clock_timestamp() + make_interval(secs => $9)), $10)
RETURNING id, status, priority, required_capability, job_type, tenant,
          greatest(0, ceil(extract(epoch FROM run_at - clock_timestamp()) * 1000))::bigint
              AS delay_ms;

-- name: insert_job_now
-- One simple job due now: nothing read back (its dispatch entry is made from the spec; run_at
-- takes its default, clock_timestamp()).
INSERT INTO jobs (id, job_type, payload, priority, status, required_capability, max_retries,
                  timeout_s, tenant)
VALUES ($1, $2, $3::text::jsonb, $4, 'PENDING', $5, $6, $7, $8);

-- name: find_idempotent
-- Keys are scoped by tenant ('' for none): ($1 tenants, $2 keys) pairwise.
SELECT j.id, j.idempotency_key, coalesce(j.tenant, '') AS scope, j.idempotency_hash,
       j.status
FROM unnest($1::text[], $2::text[]) AS k(scope, ikey)
JOIN jobs j ON coalesce(j.tenant, '') = k.scope AND j.idempotency_key = k.ikey
WHERE j.idempotency_key IS NOT NULL;

-- name: lock_dependencies
-- FOR SHARE makes a concurrent completion of a dependency wait for this create to commit,
-- so its release step sees the new edges (no job left WAITING forever).
SELECT id, status FROM jobs WHERE id = ANY($1::uuid[]) FOR SHARE;

-- name: insert_dependencies
INSERT INTO job_dependencies (job_id, depends_on_job_id)
SELECT * FROM unnest($1::uuid[], $2::uuid[]);

-- name: lease_jobs
-- Lease several popped jobs at once ($1 ids, $2 the worker each goes to): migration 015's
-- function, whose plans are made once per session.
SELECT * FROM lease_jobs($1::uuid[], $2::text[], $3::float8, $4::text);

-- name: lease_runnable
-- PostgreSQL fallback acquisition (Redis unreachable): get_runnable_jobs with SKIP LOCKED.
WITH candidate AS (
    SELECT id FROM get_runnable_jobs($1::text[], 1)
    WHERE NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = $2 AND w.status = 'QUARANTINED')
), leased AS (
    UPDATE jobs j
    SET status = 'PROCESSING', worker_id = $2, lease_token = nextval('lease_token_seq'),
        lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8),
        started_at = coalesce(j.started_at, clock_timestamp())
    FROM candidate c
    WHERE j.id = c.id
    RETURNING j.id, j.job_type, j.payload, j.priority, j.timeout_s, j.lease_token, j.retry_count,
              j.required_capability
), opened AS (
    INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, acquired_via)
    SELECT id, $2, retry_count + 1, lease_token, 'postgres' FROM leased
)
SELECT * FROM leased;

-- name: complete_and_lease
-- A worker's completions ($1-$3, as complete_jobs) and its next lease ($4-$7, as lease_jobs)
-- in one statement and transaction: migration 016.
SELECT * FROM complete_and_lease($1::uuid[], $2::bigint[], $3::jsonb[], $4::uuid[],
                                 $5::text[], $6::float8, $7::text);

-- name: complete_jobs
-- Completions in one statement and transaction (callers batched together, or one alone);
-- each row of the result belongs to the completion at position `ord` (1-based), its own row
-- first: see migration 012.
SELECT * FROM complete_jobs($1::uuid[], $2::bigint[], $3::jsonb[]);

-- name: job_state
SELECT id, status, lease_token FROM jobs WHERE id = $1;

-- name: lock_job
SELECT id, job_type, status, priority, required_capability, retry_count, max_retries,
       lease_token, worker_id, cancel_requested_at, cancel_reason,
       coalesce(lease_expires_at < clock_timestamp(), false) AS lease_expired
FROM jobs WHERE id = $1 FOR UPDATE;

-- name: close_execution
UPDATE job_executions
SET status = $2, finished_at = clock_timestamp(),
    duration_ms = extract(epoch FROM clock_timestamp() - started_at) * 1000, error = $3
WHERE lease_token = $1 AND status = 'RUNNING';

-- name: schedule_retry
UPDATE jobs
SET status = 'PENDING', retry_count = retry_count + 1, last_error = $2,
    run_at = clock_timestamp() + make_interval(secs => $3::float8),
    lease_token = NULL, lease_expires_at = NULL
WHERE id = $1
RETURNING priority, required_capability, job_type, tenant,
          greatest(0, ceil($3::float8 * 1000))::bigint AS delay_ms;

-- name: release_job
-- A drained or released lease: back to PENDING without spending a retry.
UPDATE jobs
SET status = 'PENDING', run_at = clock_timestamp(), lease_token = NULL, lease_expires_at = NULL
WHERE id = $1
RETURNING priority, required_capability, job_type, tenant, 0::bigint AS delay_ms;

-- name: mark_dead
WITH dead AS (
    UPDATE jobs
    SET status = 'DEAD', completed_at = clock_timestamp(), last_error = $2,
        lease_token = NULL, lease_expires_at = NULL
    WHERE id = $1
    RETURNING *
)
INSERT INTO dead_letter_queue (job_id, job_type, error, retry_count, job_snapshot)
SELECT id, job_type, $2, retry_count, to_jsonb(dead) FROM dead;

-- name: count_failure
UPDATE workers SET jobs_failed = jobs_failed + 1 WHERE id = $1;

-- name: mark_cancelled
UPDATE jobs
SET status = 'CANCELLED', completed_at = clock_timestamp(),
    cancel_reason = coalesce(cancel_reason, $2), lease_token = NULL, lease_expires_at = NULL
WHERE id = $1;

-- name: request_cancel
UPDATE jobs SET cancel_requested_at = clock_timestamp(), cancel_reason = $2
WHERE id = $1 AND status = 'PROCESSING' AND cancel_requested_at IS NULL;

-- name: inherit_priority
-- See migration 008: returns the jobs whose dispatch priority changed.
SELECT * FROM inherit_priority($1::uuid[], $2::boolean);

-- name: cancel_dependents
-- Every job that waits, directly or through a chain, on the given job is cancelled.
WITH RECURSIVE dependents(id) AS (
    SELECT job_id FROM job_dependencies WHERE depends_on_job_id = $1
    UNION
    SELECT d.job_id FROM job_dependencies d JOIN dependents ON d.depends_on_job_id = dependents.id
)
UPDATE jobs
SET status = 'CANCELLED', completed_at = clock_timestamp(), cancel_reason = $2
WHERE id IN (SELECT id FROM dependents) AND status = 'WAITING'
RETURNING id;

-- name: release_ready
-- WAITING jobs (among $1, or all when $1 is NULL) whose dependencies are all COMPLETED.
UPDATE jobs j
SET status = 'PENDING', run_at = greatest(j.run_at, clock_timestamp())
WHERE j.status = 'WAITING'
  AND ($1::uuid[] IS NULL OR j.id = ANY($1::uuid[]))
  AND NOT EXISTS (
      SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on_job_id
      WHERE d.job_id = j.id AND p.status <> 'COMPLETED')
RETURNING j.id, j.priority, j.required_capability, j.job_type, j.tenant,
          greatest(0, ceil(extract(epoch FROM j.run_at - clock_timestamp()) * 1000))::bigint
              AS delay_ms;

-- name: extend_lease
UPDATE jobs SET lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8)
WHERE id = $1 AND lease_token = $2 AND status = 'PROCESSING'
RETURNING cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: expired_leases
-- `heartbeating`: the holder's PostgreSQL heartbeat is younger than $2 seconds, so it let the
-- lease lapse while alive and reachable (evidence of no progress).
SELECT id, lease_token, worker_id,
       coalesce((SELECT w.status = 'ACTIVE'
                        AND w.last_heartbeat_at > clock_timestamp() - make_interval(secs => $2)
                 FROM workers w WHERE w.id = jobs.worker_id), false) AS heartbeating
FROM jobs
WHERE status = 'PROCESSING' AND lease_expires_at < clock_timestamp()
ORDER BY lease_expires_at LIMIT $1;

-- name: worker_leases
SELECT id, lease_token FROM jobs WHERE status = 'PROCESSING' AND worker_id = $1;

-- name: jobs_by_id
-- The reconciler's view of jobs it met in Redis or in a page of the sweep: by key, any status.
SELECT id::text AS id, status, priority, required_capability, job_type, tenant,
       greatest(0, ceil(extract(epoch FROM run_at - clock_timestamp()) * 1000))::bigint
           AS delay_ms,
       greatest(0, ceil(extract(epoch FROM lease_expires_at - clock_timestamp()) * 1000))::bigint
           AS lease_ms
FROM jobs WHERE id = ANY($1::uuid[]);

-- name: pending_page
-- The reconciler's sweep of PENDING jobs, one page in id order after $1 (idx_jobs_status is
-- (status, id) since migration 014): a page costs its size, whatever the backlog.
SELECT id::text AS id FROM jobs
WHERE status = 'PENDING' AND id > $1::uuid ORDER BY id LIMIT $2;

-- name: processing_jobs
-- Leases PostgreSQL holds, for the limits' running counts: as many as jobs run now (the work),
-- read through the partial indexes on PROCESSING jobs.
SELECT id::text AS id, job_type, tenant, required_capability,
       greatest(0, ceil(extract(epoch FROM lease_expires_at - clock_timestamp()) * 1000))::bigint
           AS lease_ms,
       (SELECT e.acquired_via FROM job_executions e WHERE e.lease_token = jobs.lease_token)
           AS lease_via
FROM jobs WHERE status = 'PROCESSING';

-- name: still_processing
SELECT id::text AS id FROM jobs WHERE id = ANY($1::uuid[]) AND status = 'PROCESSING';

-- name: get_job
SELECT * FROM jobs WHERE id = $1;

-- name: count_by_status
SELECT status, count(*) AS n FROM jobs GROUP BY status;

-- name: dlq_list
SELECT q.id, q.job_id, q.job_type, q.error, q.retry_count, q.failed_at
FROM dead_letter_queue q
WHERE q.requeued_at IS NULL AND ($1::text IS NULL OR q.job_type = $1)
ORDER BY q.failed_at DESC, q.id DESC
LIMIT $2 OFFSET $3;

-- name: dlq_requeue
WITH entry AS (
    UPDATE dead_letter_queue SET requeued_at = clock_timestamp()
    WHERE job_id = $1 AND requeued_at IS NULL
    RETURNING job_id
)
-- Its dependents were cancelled when it died: nothing waits on it, so it runs at its own
-- priority again (migration 008).
UPDATE jobs j
SET status = 'PENDING', retry_count = 0, run_at = clock_timestamp(), completed_at = NULL,
    priority = coalesce(j.base_priority, j.priority), base_priority = NULL
FROM entry WHERE j.id = entry.job_id AND j.status = 'DEAD'
RETURNING j.id, j.priority, j.required_capability, j.job_type, j.tenant,
          0::bigint AS delay_ms;

-- name: dlq_purge
DELETE FROM dead_letter_queue
WHERE failed_at < clock_timestamp() - make_interval(secs => $1::float8)
RETURNING job_id;

-- name: register_worker
-- A worker takes over its id's row unless another live process holds it: an ACTIVE or
-- DRAINING row with a heartbeat younger than $7 seconds from another host or pid. Then no
-- row is returned and nothing changes (no live worker is displaced).
INSERT INTO workers (id, hostname, pid, capabilities, concurrency, status, metadata)
VALUES ($1, $2, $3, $4::text[], $5, 'ACTIVE', $6::jsonb)
ON CONFLICT (id) DO UPDATE
SET hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, capabilities = EXCLUDED.capabilities,
    concurrency = EXCLUDED.concurrency, status = 'ACTIVE', stopped_at = NULL,
    failure_reason = NULL, last_heartbeat_at = clock_timestamp(), metadata = EXCLUDED.metadata
WHERE workers.status NOT IN ('ACTIVE', 'DRAINING')
   OR workers.last_heartbeat_at < clock_timestamp() - make_interval(secs => $7::float8)
   OR (workers.hostname = EXCLUDED.hostname AND workers.pid IS NOT DISTINCT FROM EXCLUDED.pid)
RETURNING id;

-- name: worker_holder
SELECT hostname, pid, status FROM workers WHERE id = $1;

-- name: heartbeat_worker
-- A worker marked STALE only because its PostgreSQL heartbeat lagged comes back to ACTIVE;
-- one declared FAILED (replaced) or STOPPED stays so, and learns it from the returned status.
UPDATE workers
SET last_heartbeat_at = clock_timestamp(),
    status = CASE WHEN status = 'STALE' THEN 'ACTIVE' ELSE status END,
    failure_reason = CASE WHEN status = 'STALE' THEN NULL ELSE failure_reason END
WHERE id = $1
RETURNING status;

-- name: set_worker_status
UPDATE workers SET status = $2 WHERE id = $1 AND status IN ('ACTIVE', 'DRAINING', 'STALE');

-- name: stop_worker
-- Never overwrites FAILED or QUARANTINED: a replaced worker that exits later stays so, with
-- its reason (a FAILED one may still be quarantined).
UPDATE workers SET status = $2, stopped_at = clock_timestamp(), failure_reason = $3
WHERE id = $1 AND (status NOT IN ('FAILED', 'QUARANTINED') OR $2 = 'QUARANTINED'
                   OR ($2 = 'FAILED' AND status = 'FAILED'));

-- name: insert_health_sample
-- One of a worker's health samples, sent in batches: dated on this server's clock, `$12`
-- seconds before now (when the worker took it), so every sample shares one clock.
INSERT INTO worker_health_samples (worker_id, rss_bytes, cpu_percent, loop_lag_ms, in_flight,
    completed, failed, duration_p50_ms, duration_p99_ms, error_rate, extra, sampled_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb,
        clock_timestamp() - make_interval(secs => $12::float8));

-- name: worker_heartbeat_ages
-- Only rows of a live registration: a STOPPED or FAILED row is a previous process's under the
-- same id (a supervisor restarted under its name), whose old heartbeat says nothing about the
-- process starting now (it counts as not registered yet, within the start-up grace).
SELECT id, status, extract(epoch FROM clock_timestamp() - last_heartbeat_at) AS age_s
FROM workers WHERE id = ANY($1::text[]) AND status IN ('ACTIVE', 'DRAINING', 'STALE');

-- name: list_workers
SELECT w.id, w.hostname, w.pid, w.capabilities, w.concurrency, w.status, w.registered_at,
       w.last_heartbeat_at, w.stopped_at, w.failure_reason, w.jobs_completed, w.jobs_failed,
       extract(epoch FROM clock_timestamp() - w.last_heartbeat_at) AS heartbeat_age_s,
       (SELECT count(*) FROM jobs j WHERE j.worker_id = w.id AND j.status = 'PROCESSING')
           AS in_flight
FROM workers w
WHERE ($1::text IS NULL OR w.status = $1)
ORDER BY w.registered_at DESC, w.id
LIMIT $2;

-- name: mark_stale_workers
SELECT worker_id FROM mark_stale_workers($1);
-- name: list_jobs
SELECT id, job_type, status, priority, retry_count, max_retries, required_capability,
       worker_id, created_at, started_at, completed_at, last_error, cancel_reason
FROM jobs
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR job_type = $2)
ORDER BY created_at DESC, id
LIMIT $3 OFFSET $4;

-- name: job_executions
SELECT id, attempt, worker_id, lease_token, acquired_via, status, started_at, finished_at,
       duration_ms, error
FROM job_executions WHERE job_id = $1 ORDER BY attempt, id;

-- name: export_jobs
SELECT id, job_type, status, priority, retry_count, max_retries, required_capability,
       idempotency_key, worker_id, created_at, run_at, started_at, completed_at,
       extract(epoch FROM started_at - created_at) * 1000 AS queue_wait_ms,
       extract(epoch FROM completed_at - created_at) * 1000 AS end_to_end_ms,
       last_error, cancel_reason
FROM jobs
WHERE ($1::text IS NULL OR status = $1)
ORDER BY created_at, id;

-- name: metrics_job_counts
-- Jobs by status, each count stopping at $1 (on idx_jobs_status): a scrape reads at most $1
-- entries per status, whatever the history. A count that reaches $1 is shown as the planner's
-- estimate instead (core/api/metrics.py). The statuses are written out, one branch each, so
-- that each is planned with its own statistics (a status with no jobs must not be looked for
-- by reading the table).
SELECT 'WAITING' AS status, count(*) AS n FROM (SELECT 1 FROM jobs WHERE status = 'WAITING' LIMIT $1) c
UNION ALL
SELECT 'PENDING', count(*) FROM (SELECT 1 FROM jobs WHERE status = 'PENDING' LIMIT $1) c
UNION ALL
SELECT 'PROCESSING', count(*) FROM (SELECT 1 FROM jobs WHERE status = 'PROCESSING' LIMIT $1) c
UNION ALL
SELECT 'COMPLETED', count(*) FROM (SELECT 1 FROM jobs WHERE status = 'COMPLETED' LIMIT $1) c
UNION ALL
SELECT 'DEAD', count(*) FROM (SELECT 1 FROM jobs WHERE status = 'DEAD' LIMIT $1) c
UNION ALL
SELECT 'CANCELLED', count(*) FROM (SELECT 1 FROM jobs WHERE status = 'CANCELLED' LIMIT $1) c;

-- name: metrics_workers
-- ACTIVE workers (the fleet), and the workers stopped within the hour (idx_workers_stopped_at).
SELECT (SELECT count(*) FROM workers WHERE status = 'ACTIVE') AS active,
       count(*) FILTER (WHERE status = 'FAILED') AS replaced,
       count(*) FILTER (WHERE status = 'FAILED' AND failure_reason LIKE 'heartbeat timed out%')
           AS heartbeat_timeouts,
       extract(epoch FROM avg(stopped_at - registered_at)) AS lifespan_s
FROM workers WHERE stopped_at > now() - interval '1 hour';

-- name: metrics_extra
-- Everything else the monitoring section asks for, in one round trip per scrape; each part
-- reads what the work made, not the history: the DLQ count stops at $1, the windows are on
-- indexed start times (executions started within the hour that completed in the last 5
-- minutes; first attempts started in the last 5 minutes).
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM dead_letter_queue WHERE requeued_at IS NULL LIMIT $1) d)
        AS dlq_size,
    (SELECT coalesce(sum(concurrency), 0) FROM workers WHERE status = 'ACTIVE') AS worker_slots,
    (SELECT count(*) FROM jobs WHERE status = 'PROCESSING') AS processing,
    (SELECT avg(duration_ms) FROM job_executions
      WHERE started_at > now() - interval '1 hour' AND finished_at > now() - interval '5 minutes'
        AND status = 'COMPLETED') AS duration_avg_ms,
    (SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY duration_ms) FROM job_executions
      WHERE started_at > now() - interval '1 hour' AND finished_at > now() - interval '5 minutes'
        AND status = 'COMPLETED') AS duration_p99_ms,
    (SELECT extract(epoch FROM avg(e.started_at - j.created_at))
       FROM job_executions e JOIN jobs j ON j.id = e.job_id
      WHERE e.started_at > now() - interval '5 minutes' AND e.attempt = 1) AS queue_wait_avg_s;

-- name: limits_version
-- Bumped by every change of job_limits (migration 014's trigger): the reconciler mirrors the
-- limits into Redis again only when this differs from the version Redis holds.
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM job_limits_version_seq;

-- name: limits_page
-- One page of limits in (scope, name) order after ($2, $3), of one scope or both: the primary
-- key serves it, so a page costs its size however many limits there are.
SELECT scope, name, max_running, rate_per_s, burst, weight, updated_at FROM job_limits
WHERE ($1::text IS NULL OR scope = $1) AND (scope, name) > ($2, $3)
ORDER BY scope, name LIMIT $4;

-- name: limits_by_key
SELECT l.scope, l.name, l.max_running, l.rate_per_s, l.burst, l.weight, l.updated_at
FROM unnest($1::text[], $2::text[]) AS k(scope, name)
JOIN job_limits l ON l.scope = k.scope AND l.name = k.name;

-- name: list_limits
SELECT scope, name, max_running, rate_per_s, burst, weight, updated_at
FROM job_limits ORDER BY scope, name;

-- name: set_limit
INSERT INTO job_limits (scope, name, max_running, rate_per_s, burst, weight)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (scope, name) DO UPDATE
SET max_running = EXCLUDED.max_running, rate_per_s = EXCLUDED.rate_per_s,
    burst = EXCLUDED.burst, weight = EXCLUDED.weight, updated_at = clock_timestamp();

-- name: clear_limit
WITH gone AS (DELETE FROM job_limits WHERE scope = $1 AND name = $2 RETURNING 1)
SELECT count(*) > 0 FROM gone;

-- name: running_by_scope
SELECT 'job_type' AS scope, job_type AS name, count(*) AS n FROM jobs
WHERE status = 'PROCESSING' GROUP BY job_type
UNION ALL
SELECT 'tenant', tenant, count(*) FROM jobs
WHERE status = 'PROCESSING' AND tenant IS NOT NULL GROUP BY tenant;

-- name: has_admission_limits
SELECT EXISTS (SELECT 1 FROM job_limits
               WHERE max_running IS NOT NULL OR rate_per_s IS NOT NULL);

-- name: max_rate_window
-- The widest sliding window of any rate limit (burst / rate seconds): how far back the
-- fallback counts starts. Read again only when the limits' version moved.
SELECT coalesce(max(coalesce(burst, greatest(1, floor(rate_per_s))::int) / rate_per_s), 0)
FROM job_limits WHERE rate_per_s IS NOT NULL;

-- name: lock_admission
-- Serialises PostgreSQL-fallback leases while limits exist: each one counts what runs
-- after the previous one committed (a statement's snapshot is taken after the lock).
SELECT pg_advisory_xact_lock(hashtext('jobharness.admission'));

-- name: lease_runnable_limited
-- The PostgreSQL fallback under limits (run after lock_admission, in its transaction): a type
-- or tenant at its max_running, or with `burst` starts within the last burst/rate seconds
-- (the token bucket's sliding-window equivalent), is passed over. No fair share here: the
-- fallback keeps priority then age. What it counts is the work, never the limits: the jobs
-- running now and the starts of the last $4 seconds (the widest rate window of any limit,
-- from the caller), each looked up in job_limits by key.
WITH running AS (
    SELECT 'job_type' AS scope, job_type AS name, count(*) AS n
    FROM jobs WHERE status = 'PROCESSING' GROUP BY job_type
    UNION ALL
    SELECT 'tenant', tenant, count(*) FROM jobs
    WHERE status = 'PROCESSING' AND tenant IS NOT NULL GROUP BY tenant
), started AS (
    SELECT j.job_type, j.tenant, e.started_at
    FROM job_executions e JOIN jobs j ON j.id = e.job_id
    WHERE e.started_at > clock_timestamp() - make_interval(secs => $4::float8)
), recent AS (
    SELECT 'job_type' AS scope, job_type AS name, started_at FROM started
    UNION ALL
    SELECT 'tenant', tenant, started_at FROM started WHERE tenant IS NOT NULL
), blocked AS (
    SELECT l.scope, l.name FROM running r
    JOIN job_limits l ON l.scope = r.scope AND l.name = r.name
    WHERE l.max_running <= r.n
    UNION
    SELECT l.scope, l.name FROM recent x
    JOIN job_limits l ON l.scope = x.scope AND l.name = x.name AND l.rate_per_s IS NOT NULL
    WHERE x.started_at > clock_timestamp() - make_interval(
              secs => coalesce(l.burst, greatest(1, floor(l.rate_per_s))::int) / l.rate_per_s)
    GROUP BY l.scope, l.name, l.burst, l.rate_per_s
    HAVING count(*) >= coalesce(l.burst, greatest(1, floor(l.rate_per_s))::int)
), candidate AS (
    SELECT j.id FROM jobs j
    WHERE j.status = 'PENDING' AND j.run_at <= clock_timestamp()
      AND (j.required_capability IS NULL OR j.required_capability = ANY ($1::text[]))
      AND j.job_type NOT IN (SELECT name FROM blocked WHERE scope = 'job_type')
      AND (j.tenant IS NULL OR j.tenant NOT IN (SELECT name FROM blocked WHERE scope = 'tenant'))
      AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = $2 AND w.status = 'QUARANTINED')
    ORDER BY j.priority DESC, j.run_at, j.created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE jobs j
    SET status = 'PROCESSING', worker_id = $2, lease_token = nextval('lease_token_seq'),
        lease_expires_at = clock_timestamp() + make_interval(secs => $3::float8),
        started_at = coalesce(j.started_at, clock_timestamp())
    FROM candidate c
    WHERE j.id = c.id
    RETURNING j.id, j.job_type, j.payload, j.priority, j.timeout_s, j.lease_token, j.retry_count,
              j.required_capability
), opened AS (
    INSERT INTO job_executions (job_id, worker_id, attempt, lease_token, acquired_via)
    SELECT id, $2, retry_count + 1, lease_token, 'postgres' FROM leased
)
SELECT * FROM leased;

-- name: admit_limited
-- Jobs popped from Redis under a max_running limit, checked against PostgreSQL's own count
-- (run after lock_admission, in the transaction that leases them): in pop order, a job is
-- admitted while its type's and its tenant's PROCESSING jobs plus those admitted before it
-- stay within max_running. (A job refused for one scope still takes its place in the other:
-- on the safe side.) Catches what Redis cannot see: leases the PostgreSQL fallback took
-- moments ago, before the reconciler counted them.
WITH c AS (
    SELECT j.id, j.job_type, j.tenant, j.priority, j.required_capability, u.ord
    FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, ord)
    JOIN jobs j ON j.id = u.id AND j.status = 'PENDING'
), running AS (
    SELECT l.scope, l.name, l.max_running,
           (SELECT count(*) FROM jobs j WHERE j.status = 'PROCESSING'
              AND ((l.scope = 'job_type' AND j.job_type = l.name)
                   OR (l.scope = 'tenant' AND j.tenant = l.name))) AS n
    FROM job_limits l WHERE l.max_running IS NOT NULL
      -- only the limits of these jobs' types and tenants (looked up by key), not every one
      AND ((l.scope = 'job_type' AND l.name IN (SELECT job_type FROM c))
           OR (l.scope = 'tenant' AND l.name IN (SELECT tenant FROM c)))
), ranked AS (
    SELECT c.*,
           row_number() OVER (PARTITION BY c.job_type ORDER BY c.ord) AS type_rank,
           row_number() OVER (PARTITION BY c.tenant ORDER BY c.ord) AS tenant_rank
    FROM c
)
SELECT r.id, r.job_type, r.tenant, r.priority, r.required_capability,
       coalesce((SELECT t.n + r.type_rank <= t.max_running FROM running t
                 WHERE t.scope = 'job_type' AND t.name = r.job_type), true)
       AND coalesce((SELECT t.n + r.tenant_rank <= t.max_running FROM running t
                     WHERE t.scope = 'tenant' AND t.name = r.tenant), true) AS admitted
FROM ranked r ORDER BY r.ord;

-- name: supervisor_workers
-- The workers a supervisor registered that may still run (its roster, read back from
-- PostgreSQL when no memory owner has it).
SELECT id, pid, hostname FROM workers
WHERE metadata->>'supervisor' = $1 AND status IN ('ACTIVE', 'DRAINING', 'STALE');

-- name: record_evidence
INSERT INTO worker_evidence (worker_id, kind, job_id, detail) VALUES ($1, $2, $3, $4);

-- name: token_owner
-- Whose lease a token was: a completion's token that no execution of this job issued to this
-- worker is forged.
SELECT job_id, worker_id FROM job_executions WHERE lease_token = $1;

-- name: recent_evidence
-- Evidence against the given workers since $2 seconds ago, by worker and kind (one index range
-- per worker: bounded by the fleet and its misbehaviour, not by history).
SELECT worker_id, kind, count(*) AS n, max(detail) AS detail
FROM worker_evidence
WHERE worker_id = ANY($1::text[]) AND at > clock_timestamp() - make_interval(secs => $2)
  AND kind <> 'id_taken'
GROUP BY worker_id, kind;

