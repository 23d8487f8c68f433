-- Back to the seed's idx_jobs_status on (status) alone (the reconciler's page query then sorts
-- every PENDING job for each page), and no index on workers' stop times.
DROP INDEX idx_workers_stopped_at;
DROP INDEX idx_jobs_status;
CREATE INDEX idx_jobs_status ON jobs (status);
