-- Back to one job per key across tenants (fails, changing nothing, if two tenants have
-- since used the same key: resolve those jobs first).
DROP INDEX idx_jobs_idempotency_key;
-- Serves find_idempotent and insert_jobs' ON CONFLICT: one job per key.
CREATE UNIQUE INDEX idx_jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
