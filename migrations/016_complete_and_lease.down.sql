-- Back to a completion and a lease in statements of their own (run the service of before
-- with it: it does not call this function).
DROP FUNCTION complete_and_lease(uuid[], bigint[], jsonb[], uuid[], text[], double precision,
                                 text);
