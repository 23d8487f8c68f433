DROP TABLE IF EXISTS job_executions;
