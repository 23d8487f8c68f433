-- 008 down: every job goes back to its own priority (a job already queued in Redis keeps
-- its place there until it runs), then the function and the column go.
DROP FUNCTION IF EXISTS inherit_priority(uuid[], boolean);
UPDATE jobs SET priority = base_priority WHERE base_priority IS NOT NULL;
ALTER TABLE jobs DROP COLUMN IF EXISTS base_priority;
