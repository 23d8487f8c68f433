-- 014: indexes for reads whose cost must not grow with history (invariant 8).
-- idx_jobs_status gains the id, (status) -> (status, id). It serves what it served
-- (rows of one status) and, in id order, the reconciler's sweep of PENDING jobs one page at a
-- time, so a pass costs the page, not the backlog (invariant 8). One index either way: a
-- create or a status change updates as many indexes as before.
DROP INDEX idx_jobs_status;
-- Serves counts by status and pending_page (the reconciler's sweep, keyset on id).
CREATE INDEX idx_jobs_status ON jobs (status, id);
-- Serves metrics_workers and its lifespan: workers stopped within the hour, not every worker
-- that ever ran (workers are written at registration and stop only: a cheap index).
CREATE INDEX idx_workers_stopped_at ON workers (stopped_at) WHERE stopped_at IS NOT NULL;
-- The limits' version, bumped by every statement that changes job_limits: the reconciler
-- mirrors the limits into Redis again only when it differs from the version Redis holds, so a
-- pass does not read every limit (limits_version in core/store/sql/queries.sql).
CREATE SEQUENCE job_limits_version_seq;
CREATE FUNCTION bump_job_limits_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('job_limits_version_seq');
    RETURN NULL;
END
$$;
CREATE TRIGGER job_limits_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON job_limits
    FOR EACH STATEMENT EXECUTE FUNCTION bump_job_limits_version();
