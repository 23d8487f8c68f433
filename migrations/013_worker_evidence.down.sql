DROP TABLE IF EXISTS worker_evidence;
UPDATE workers SET status = 'FAILED' WHERE status = 'QUARANTINED';
ALTER TABLE workers DROP CONSTRAINT workers_status_check;
ALTER TABLE workers ADD CONSTRAINT workers_status_check
    CHECK (status IN ('ACTIVE', 'DRAINING', 'STOPPED', 'STALE', 'FAILED'));
