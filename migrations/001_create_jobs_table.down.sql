DROP FUNCTION IF EXISTS get_runnable_jobs(text[], integer);
DROP TABLE IF EXISTS jobs;
DROP FUNCTION IF EXISTS update_jobs_updated_at();
DROP SEQUENCE IF EXISTS lease_token_seq;
