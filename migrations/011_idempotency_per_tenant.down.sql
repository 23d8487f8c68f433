-- Back to one job per key across tenants (fails, changing nothing, if two tenants have
-- since used the same key: resolve those jobs first).
DROP INDEX idx_jobs_idempotency_key;
CREATE UNIQUE INDEX idx_jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
