"""Run-folder exports, read through the contract (tables) with PostgreSQL timestamps."""

from __future__ import annotations

from pathlib import Path

import asyncpg

EXPORTS = {
    "jobs.csv": """
        SELECT j.id, j.job_type, j.priority, j.status, j.retry_count, j.max_retries,
               j.required_capability, j.worker_id, j.created_at, j.run_at, j.started_at,
               j.completed_at,
               extract(epoch FROM j.started_at - j.created_at) * 1000 AS queue_wait_ms,
               extract(epoch FROM j.completed_at - j.created_at) * 1000 AS end_to_end_ms,
               (SELECT count(*) FROM job_executions e WHERE e.job_id = j.id) AS attempts,
               j.last_error, j.cancel_reason, j.tenant
        FROM jobs j ORDER BY j.created_at, j.id""",
    "executions.csv": """
        SELECT id, job_id, worker_id, attempt, lease_token, acquired_via, status, started_at,
               finished_at, duration_ms, error
        FROM job_executions ORDER BY started_at, id""",
    "worker_health.csv": """
        SELECT worker_id, sampled_at, rss_bytes, cpu_percent, loop_lag_ms, in_flight,
               completed, failed, duration_p50_ms, duration_p99_ms, error_rate,
               coalesce((extra->>'timed_out')::bigint, 0) AS timed_out
        FROM worker_health_samples ORDER BY sampled_at, id""",
    "workers.csv": """
        SELECT id, status, registered_at, last_heartbeat_at, stopped_at, failure_reason,
               jobs_completed, jobs_failed, concurrency, capabilities
        FROM workers ORDER BY registered_at, id""",
    "dead_letter_queue.csv": """
        SELECT job_id, job_type, error, retry_count, failed_at, requeued_at
        FROM dead_letter_queue ORDER BY failed_at, id""",
}


async def export_tables(conn: asyncpg.Connection, run_dir: Path) -> list[str]:
    written = []
    for name, sql in EXPORTS.items():
        await conn.copy_from_query(sql, output=str(run_dir / name), format="csv", header=True)
        written.append(name)
    return written
