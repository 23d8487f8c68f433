DROP FUNCTION IF EXISTS mark_stale_workers(double precision);
DROP TABLE IF EXISTS workers;
