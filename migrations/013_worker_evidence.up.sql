-- 013: misbehaving (Byzantine) workers. Evidence against a worker is recorded where it shows:
-- a completion with a lease token that was never this worker's for this job (forged_token),
-- a lease left to expire while the worker kept heartbeating (no_progress), a job of a
-- capability the worker claimed but cannot run (false_capability), and a registration under
-- the id of a live worker (id_taken: recorded against the id, never held against its owner).
-- A worker with enough evidence is QUARANTINED: it gets no more leases, and is replaced.
ALTER TABLE workers DROP CONSTRAINT workers_status_check;
ALTER TABLE workers ADD CONSTRAINT workers_status_check
    CHECK (status IN ('ACTIVE', 'DRAINING', 'STOPPED', 'STALE', 'FAILED', 'QUARANTINED'));

CREATE TABLE worker_evidence (
    id        bigserial   PRIMARY KEY,
    worker_id text        NOT NULL,
    kind      text        NOT NULL
        CHECK (kind IN ('forged_token', 'no_progress', 'false_capability', 'id_taken')),
    job_id    uuid,
    detail    text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- a supervisor reads the recent evidence of its own live workers, one index range each
CREATE INDEX idx_worker_evidence_worker ON worker_evidence (worker_id, at);
