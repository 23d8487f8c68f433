-- Mirror one limit at once (the reconciler re-mirrors them all): set it, or remove it when
-- no value is given. A tenant's parked turns come back at once (the acquisitions park them
-- again if the new limit still holds them back); a type's parked flows come back through
-- the acquisitions, which read the new limit. Idle workers are woken to look.
-- KEYS: wakeup, sched
-- ARGV: field, value ('' to remove), wakeup_cap
SCHED = KEYS[2]
local field, value = ARGV[1], ARGV[2]
if value == '' then
  redis.call('HDEL', SCHED .. ':limits', field)
else
  redis.call('HSET', SCHED .. ':limits', field, value)
end
unpark_tenant(field)
push_wakeups(KEYS[1], 4, ARGV[3])
return 1
