-- 009: a job may name the tenant it belongs to (Phase 2 scheduling: per-tenant quotas and
-- fair shares build on it). NULL: no tenant.
ALTER TABLE jobs ADD COLUMN tenant text CHECK (length(tenant) BETWEEN 1 AND 200);
