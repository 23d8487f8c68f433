-- 009 down: jobs forget their tenant.
ALTER TABLE jobs DROP COLUMN IF EXISTS tenant;
