-- Enqueue jobs: due ones into their priority queue, later ones into the delayed set.
-- KEYS: delayed, job-meta, wakeup, high, medium, low
-- ARGV: wakeup_cap; job ids joined by ","; their priorities, one digit each; their delays in
--       ms joined by ","; one flag per job, "1" when it needs a capability; then the
--       capabilities of the flagged jobs, in order. (A few long arguments instead of four per
--       job: packing thousands of arguments costs the client more than the whole script.)
-- A job already queued keeps its place (NX); one wake-up token is pushed per due job.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prios, flags = ARGV[3], ARGV[5]
local delays = {}
for d in string.gmatch(ARGV[4], '[^,]+') do delays[#delays + 1] = tonumber(d) end
local wakeups = 0
-- arguments gathered per key and sent in chunks: one call per key, not one per job
local meta, delayed, queued = {}, {}, {[KEYS[4]] = {}, [KEYS[5]] = {}, [KEYS[6]] = {}}
local i, next_cap = 0, 6
for id in string.gmatch(ARGV[2], '[^,]+') do
  i = i + 1
  local prio, delay, cap = tonumber(string.sub(prios, i, i)), delays[i], ''
  if string.sub(flags, i, i) == '1' then
    cap = ARGV[next_cap]
    next_cap = next_cap + 1
  end
  meta[#meta + 1] = id
  meta[#meta + 1] = prio .. '|' .. cap
  if delay > 0 then
    delayed[#delayed + 1] = string.format('%.0f', now + delay)
    delayed[#delayed + 1] = id
  else
    local q
    if prio >= 4 then q = KEYS[4] elseif prio >= 2 then q = KEYS[5] else q = KEYS[6] end
    local args = queued[q]
    args[#args + 1] = string.format('%.0f', (6 - prio) * 1e13 + now)
    args[#args + 1] = id
    wakeups = wakeups + 1
  end
end

local function send(cmd, key, flag, args)
  for s = 1, #args, 1000 do
    local chunk = {unpack(args, s, math.min(s + 999, #args))}
    if flag then
      redis.call(cmd, key, flag, unpack(chunk))
    else
      redis.call(cmd, key, unpack(chunk))
    end
  end
end
send('HSET', KEYS[2], nil, meta)
send('ZADD', KEYS[1], nil, delayed)
for q, args in pairs(queued) do send('ZADD', q, 'NX', args) end
if wakeups > 0 then
  local tokens = {}
  for i = 1, math.min(wakeups, 1000) do tokens[i] = '1' end
  redis.call('LPUSH', KEYS[3], unpack(tokens))
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[1]) - 1)
end
return wakeups
