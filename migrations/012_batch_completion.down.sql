-- complete_job (migration 010) stays and serves completions one by one again.
DROP FUNCTION IF EXISTS complete_jobs(uuid[], bigint[], jsonb[]);
