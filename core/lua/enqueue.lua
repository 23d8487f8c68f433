-- Enqueue jobs: due ones into their priority queue, later ones into the delayed set.
-- KEYS: delayed, job-meta, wakeup, high, medium, low
-- ARGV: wakeup_cap, then per job: id, priority, capability ("" for any), delay_ms
-- A job already queued keeps its place (NX); one wake-up token is pushed per due job.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wakeups = 0
for i = 2, #ARGV, 4 do
  local id, prio, cap, delay = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  redis.call('HSET', KEYS[2], id, prio .. '|' .. cap)
  if delay > 0 then
    redis.call('ZADD', KEYS[1], string.format('%.0f', now + delay), id)
  else
    local q
    if prio >= 4 then q = KEYS[4] elseif prio >= 2 then q = KEYS[5] else q = KEYS[6] end
    redis.call('ZADD', q, 'NX', string.format('%.0f', (6 - prio) * 1e13 + now), id)
    wakeups = wakeups + 1
  end
end
if wakeups > 0 then
  local tokens = {}
  for i = 1, math.min(wakeups, 1000) do tokens[i] = '1' end
  redis.call('LPUSH', KEYS[3], unpack(tokens))
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]) - 1)
end
return wakeups
