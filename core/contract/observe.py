"""The read-only SQL the harness observes a job system with: the run folder's exports, the
invariant checks, the sampler's counts and the drills' probes. It reads only the seed's tables
(and `job_limits` where the schema has it), so it judges any implementation of the contract."""

from __future__ import annotations

from core.contract import runfolder

# -- run-folder exports: file name -> query (COPY ... TO as CSV with a header) ----------------
EXPORTS = {
    runfolder.JOBS: """
        SELECT j.id, j.job_type, j.priority, j.status, j.retry_count, j.max_retries,
               j.required_capability, j.worker_id, j.created_at, j.run_at, j.started_at,
               j.completed_at,
               extract(epoch FROM j.started_at - j.created_at) * 1000 AS queue_wait_ms,
               extract(epoch FROM j.completed_at - j.created_at) * 1000 AS end_to_end_ms,
               (SELECT count(*) FROM job_executions e WHERE e.job_id = j.id) AS attempts,
               j.last_error, j.cancel_reason, j.tenant
        FROM jobs j ORDER BY j.created_at, j.id""",
    runfolder.EXECUTIONS: """
        SELECT id, job_id, worker_id, attempt, lease_token, acquired_via, status, started_at,
               finished_at, duration_ms, error
        FROM job_executions ORDER BY started_at, id""",
    runfolder.WORKER_HEALTH: """
        SELECT worker_id, sampled_at, rss_bytes, cpu_percent, loop_lag_ms, in_flight,
               completed, failed, duration_p50_ms, duration_p99_ms, error_rate,
               coalesce((extra->>'timed_out')::bigint, 0) AS timed_out
        FROM worker_health_samples ORDER BY sampled_at, id""",
    runfolder.WORKERS: """
        SELECT id, status, registered_at, last_heartbeat_at, stopped_at, failure_reason,
               jobs_completed, jobs_failed, concurrency, capabilities
        FROM workers ORDER BY registered_at, id""",
    runfolder.DEAD_LETTER_QUEUE: """
        SELECT job_id, job_type, error, retry_count, failed_at, requeued_at
        FROM dead_letter_queue ORDER BY failed_at, id""",
}


# -- invariant checks: (name, what a violation is, query returning the offending ids) ----------
CHECKS: list[tuple[str, str, str]] = [
    ("lost_jobs", "accepted jobs not in a terminal state after the drain deadline",
     "SELECT id::text AS id FROM jobs WHERE status NOT IN ('COMPLETED', 'DEAD', 'CANCELLED')"
     " AND ($1::timestamptz IS NULL OR created_at <= $1)"),
    ("completed_twice", "jobs with more than one COMPLETED execution",
     "SELECT job_id::text AS id FROM job_executions WHERE status = 'COMPLETED'"
     " GROUP BY job_id HAVING count(*) > 1"),
    ("completed_without_execution", "COMPLETED jobs with no COMPLETED execution",
     "SELECT j.id::text AS id FROM jobs j WHERE j.status = 'COMPLETED' AND NOT EXISTS ("
     " SELECT 1 FROM job_executions e WHERE e.job_id = j.id AND e.status = 'COMPLETED')"),
    ("stuck_leases", "PROCESSING jobs whose lease ran out more than a minute ago",
     "SELECT id::text AS id FROM jobs WHERE status = 'PROCESSING'"
     " AND lease_expires_at < clock_timestamp() - interval '60 seconds'"),
    ("executions_without_job", "execution rows whose job does not exist",
     "SELECT e.id::text AS id FROM job_executions e"
     " WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id)"),
    ("dlq_without_dead_job", "live dead-letter entries whose job is not DEAD",
     "SELECT q.job_id::text AS id FROM dead_letter_queue q LEFT JOIN jobs j ON j.id = q.job_id"
     " WHERE q.requeued_at IS NULL AND (j.id IS NULL OR j.status <> 'DEAD')"),
    # fencing: a job's leases follow one another, each with a larger token than the last
    ("fencing_out_of_order", "jobs whose lease tokens do not rise with their leases' starts",
     "SELECT DISTINCT job_id::text AS id FROM ("
     " SELECT job_id, lease_token, lag(lease_token) OVER (PARTITION BY job_id"
     " ORDER BY started_at, id) AS before FROM job_executions) x"
     " WHERE before IS NOT NULL AND lease_token <= before"),
    ("lease_after_completion", "jobs leased again after a completion was accepted (or a "
     "completion accepted from a lease a later one had superseded)",
     "SELECT DISTINCT a.job_id::text AS id FROM job_executions a JOIN job_executions b"
     " ON b.job_id = a.job_id AND b.lease_token > a.lease_token WHERE a.status = 'COMPLETED'"),
]

# Each execution is a lease from started_at to finished_at (still open: to now); at equal
# instants an end counts before a start. Uses the limits as they stand at check time.
LIMIT_OVERRUNS_DESCRIPTION = ("job types or tenants with more leases open at once than their "
                              "max_running")
LIMIT_OVERRUNS = """
WITH lim AS (
    SELECT scope, name, max_running FROM job_limits WHERE max_running IS NOT NULL
), ev AS (
    SELECT l.scope, l.name, l.max_running, v.t, v.d
    FROM lim l
    JOIN jobs j ON (l.scope = 'job_type' AND j.job_type = l.name)
                OR (l.scope = 'tenant' AND j.tenant = l.name)
    JOIN job_executions e ON e.job_id = j.id
    CROSS JOIN LATERAL (VALUES (e.started_at, 1),
                               (coalesce(e.finished_at, clock_timestamp()), -1)) v(t, d)
), open_at AS (
    SELECT scope, name, max_running,
           sum(d) OVER (PARTITION BY scope, name ORDER BY t, d
                        ROWS UNBOUNDED PRECEDING) AS open
    FROM ev
)
SELECT scope || ' ' || name || ': ' || max(open) || ' leases at once, limit '
       || max_running AS id
FROM open_at GROUP BY scope, name, max_running HAVING max(open) > max_running
ORDER BY 1
"""

# which of the given ids (text) are jobs still PENDING or PROCESSING (orphan Redis entries)
LIVE_AMONG = ("SELECT id::text AS id FROM jobs WHERE status IN ('PENDING', 'PROCESSING')"
              " AND id::text = ANY($1)")
# checks whose query takes a cutoff ($1): only jobs created by then are judged (None: all)
CUTOFF_CHECKS = frozenset({"lost_jobs"})
HAS_LIMITS_TABLE = "SELECT to_regclass('job_limits') IS NOT NULL"

# -- the sampler and the probes ----------------------------------------------------------------
JOB_COUNTS = "SELECT status, count(*) AS n FROM jobs GROUP BY status"
WORKER_COUNTS = ("SELECT count(*) FILTER (WHERE status = 'ACTIVE') AS active,"
                 " count(*) FILTER (WHERE status = 'FAILED') AS failed FROM workers")
ACTIVE_WORKERS = "SELECT count(*) FROM workers WHERE status = 'ACTIVE'"
BACKLOG = "SELECT count(*) FROM jobs WHERE status IN ('WAITING', 'PENDING', 'PROCESSING')"
BACKLOG_CREATED_BEFORE = BACKLOG + " AND created_at <= $1"
# workers replaced for a stale heartbeat between two instants (epoch seconds)
HEARTBEAT_REPLACEMENTS = ("SELECT count(*) FROM workers WHERE status = 'FAILED'"
                          " AND failure_reason LIKE 'heartbeat timed out%'"
                          " AND stopped_at BETWEEN to_timestamp($1) AND to_timestamp($2)")
# the workers quarantined (migration 013)
QUARANTINED = "SELECT id FROM workers WHERE status = 'QUARANTINED'"
