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
