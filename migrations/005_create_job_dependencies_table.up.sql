-- 005: job_dependencies, edges "job_id waits for depends_on_job_id".

CREATE TABLE job_dependencies (
    job_id            uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    depends_on_job_id uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, depends_on_job_id),
    CONSTRAINT job_dependencies_no_self CHECK (job_id <> depends_on_job_id)
);

-- Release and propagation: the dependents of a finished job.
CREATE INDEX idx_job_dependencies_depends_on ON job_dependencies (depends_on_job_id);
