-- Back to the seed's idx_jobs_status on (status) alone (the reconciler's page query then sorts
-- every PENDING job for each page), no index on workers' stop times, no limits version (run
-- the previous reconciler with it: it mirrors every limit each pass).
DROP TRIGGER job_limits_version ON job_limits;
DROP FUNCTION bump_job_limits_version();
DROP SEQUENCE job_limits_version_seq;
DROP INDEX idx_workers_stopped_at;
DROP INDEX idx_jobs_status;
CREATE INDEX idx_jobs_status ON jobs (status);
