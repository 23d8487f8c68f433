-- 011: an idempotency key is its tenant's own. The same key sent by two tenants names two
-- jobs, and a conflict (same key, different spec) can only ever name a job of the caller's
-- own tenant. Jobs without a tenant share the '' scope, as every job did before.
DROP INDEX idx_jobs_idempotency_key;
-- Serves find_idempotent and insert_jobs' ON CONFLICT: one job per tenant and key.
CREATE UNIQUE INDEX idx_jobs_idempotency_key ON jobs ((coalesce(tenant, '')), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
