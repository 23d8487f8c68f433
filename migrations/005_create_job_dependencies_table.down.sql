DROP TABLE IF EXISTS job_dependencies;
