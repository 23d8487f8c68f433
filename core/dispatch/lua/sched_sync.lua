-- Make the scheduling state agree with PostgreSQL again (run by the reconciler): the limits
-- mirror is replaced by the table's rows; leases PostgreSQL holds that the processing set
-- lacks are recorded there and counted against their limits - those taken through the
-- PostgreSQL fallback, and all of them when Redis has lost its data (the marker
-- {sched}:epoch is gone); held records without a lease are dropped; the running counts are
-- recounted from the held records. (A Redis lease missing from the processing set while
-- Redis kept its data was given back after the reconciler read PostgreSQL: not recorded.)
-- The mirror is rewritten only when the caller sends it (n >= 0: the table changed since the
-- version Redis holds, or Redis lost it); n = -1 keeps it, so a quiet pass costs the leases,
-- not the number of limits.
-- KEYS: processing, sched
-- ARGV: n, then n limit fields and values alternating, then the table's version (n >= 0
--       only); then the leased jobs' ids joined by
--       ","; their remaining lease in ms joined by ","; per job "1" when leased through the
--       fallback else "0", one character each; the positions of their flows among the flows
--       that follow, joined by ","; then the distinct flows.
-- Returns {ids of the leases recorded joined by ",", held records dropped}.
SCHED = KEYS[2]
local n = tonumber(ARGV[1])
local old_limits = {}
local old_running = redis.call('HGETALL', SCHED .. ':running')
local base = 2
if n >= 0 then
  old_limits = redis.call('HGETALL', SCHED .. ':limits')
  redis.call('DEL', SCHED .. ':limits')
  for k = 0, n - 1 do
    redis.call('HSET', SCHED .. ':limits', ARGV[2 + 2 * k], ARGV[3 + 2 * k])
  end
  redis.call('SET', SCHED .. ':limits_version', ARGV[2 + 2 * n])
  base = 3 + 2 * n
end
local now = now_ms()
local lost = redis.call('EXISTS', SCHED .. ':epoch') == 0
redis.call('SET', SCHED .. ':epoch', now)
local via = ARGV[base + 2]
local leases, which = {}, {}
for v in string.gmatch(ARGV[base + 1], '[^,]+') do leases[#leases + 1] = tonumber(v) end
for v in string.gmatch(ARGV[base + 3], '[^,]+') do which[#which + 1] = tonumber(v) end
local recorded, i = {}, 0
for id in string.gmatch(ARGV[base], '[^,]+') do
  i = i + 1
  if (lost or string.sub(via, i, i) == '1') and not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', now + leases[i]), id)
    redis.call('HSET', SCHED .. ':held', id, ARGV[base + 3 + which[i]])
    recorded[#recorded + 1] = id
  end
end
local held = redis.call('HGETALL', SCHED .. ':held')
local counts, dropped = {}, 0
for k = 1, #held, 2 do
  local id, flow = held[k], held[k + 1]
  if redis.call('ZSCORE', KEYS[1], id) then
    local jt, tenant = split_flow(flow)
    for _, field in ipairs({'job_type' .. NUL .. jt, 'tenant' .. NUL .. tenant}) do
      counts[field] = (counts[field] or 0) + 1
    end
  else
    redis.call('HDEL', SCHED .. ':held', id)
    dropped = dropped + 1
  end
end
redis.call('DEL', SCHED .. ':running')
for field, c in pairs(counts) do redis.call('HSET', SCHED .. ':running', field, c) end
-- a tenant whose limit changed or whose count went down gets its parked turns back (the
-- acquisitions park them again if it is still held back; a type's flows come back through
-- the acquisitions, which read the new limit and counts)
local changed = {}
for k = 1, #old_limits, 2 do
  if redis.call('HGET', SCHED .. ':limits', old_limits[k]) ~= old_limits[k + 1] then
    changed[old_limits[k]] = true
  end
end
for k = 1, #old_running, 2 do
  if (counts[old_running[k]] or 0) < tonumber(old_running[k + 1]) then
    changed[old_running[k]] = true
  end
end
for field in pairs(changed) do unpark_tenant(field) end
return {table.concat(recorded, ','), dropped}
