-- Back to planning a lease and a completion on every call (run the service of before with it:
-- its lease is a statement of its own, not this function).
DROP FUNCTION lease_jobs(uuid[], text[], double precision, text);
ALTER FUNCTION complete_jobs(uuid[], bigint[], jsonb[]) RESET plan_cache_mode;
