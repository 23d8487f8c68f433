-- 014: idx_jobs_status gains the id, (status) -> (status, id). It serves what it served
-- (rows of one status) and, in id order, the reconciler's sweep of PENDING jobs one page at a
-- time, so a pass costs the page, not the backlog (invariant 8). One index either way: a
-- create or a status change updates as many indexes as before.
DROP INDEX idx_jobs_status;
-- Serves counts by status and pending_page (the reconciler's sweep, keyset on id).
CREATE INDEX idx_jobs_status ON jobs (status, id);
