DROP TABLE IF EXISTS worker_health_samples;
