DROP FUNCTION IF EXISTS complete_job(uuid, bigint, jsonb);
