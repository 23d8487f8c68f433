-- 004: dead_letter_queue, jobs that exhausted their retries, with the error and a snapshot.

CREATE TABLE dead_letter_queue (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    job_type      text        NOT NULL,
    error         text        NOT NULL,
    retry_count   integer     NOT NULL CHECK (retry_count >= 0),
    job_snapshot  jsonb       NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    requeued_at   timestamptz
);

-- One live (not requeued) entry per job; requeue looks it up by job.
CREATE UNIQUE INDEX idx_dlq_live_job ON dead_letter_queue (job_id) WHERE requeued_at IS NULL;
-- Retention purge and listing newest first.
CREATE INDEX idx_dlq_failed_at ON dead_letter_queue (failed_at);
-- Listing and alerting per job type.
CREATE INDEX idx_dlq_job_type ON dead_letter_queue (job_type, failed_at);
