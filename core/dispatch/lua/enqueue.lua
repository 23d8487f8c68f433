-- Enqueue jobs: due ones into their priority queue and their flow, later ones into the delayed
-- set (they join their flow when promoted).
-- KEYS: delayed, job-meta, wakeup, high, medium, low, sched
-- ARGV: wakeup_cap; job ids joined by ","; their priorities, one digit each; their delays in
--       ms joined by ","; for each job the position of its flow among the flows that follow,
--       joined by ","; then the distinct flows. (A few long arguments instead of several per
--       job: packing thousands of arguments costs the client more than the whole script.)
-- A job already queued keeps its place (NX); one wake-up token is pushed per due job.
SCHED = KEYS[7]
local now = now_ms()
local prios = ARGV[3]
local delays, which = {}, {}
for d in string.gmatch(ARGV[4], '[^,]+') do delays[#delays + 1] = tonumber(d) end
for f in string.gmatch(ARGV[5], '[^,]+') do which[#which + 1] = tonumber(f) end
local queues = {h = KEYS[4], m = KEYS[5], l = KEYS[6]}
local wakeups = 0
-- arguments gathered per key and sent in chunks: one call per key, not one per job
local meta, delayed = {}, {}
local queued = {[KEYS[4]] = {}, [KEYS[5]] = {}, [KEYS[6]] = {}}
local flowed = {}  -- flow key -> ZADD arguments
local i = 0
for id in string.gmatch(ARGV[2], '[^,]+') do
  i = i + 1
  local prio, delay, flow = tonumber(string.sub(prios, i, i)), delays[i], ARGV[5 + which[i]]
  meta[#meta + 1] = id
  meta[#meta + 1] = prio .. '|' .. flow
  if delay > 0 then
    delayed[#delayed + 1] = string.format('%.0f', now + delay)
    delayed[#delayed + 1] = id
  else
    local band = band_of(prio)
    local score = string.format('%.0f', (6 - prio) * 1e13 + now)
    local args = queued[queues[band]]
    args[#args + 1] = score
    args[#args + 1] = id
    local sha = redis.sha1hex(flow)
    local fkey = flow_key(band, sha)
    if not flowed[fkey] then
      flowed[fkey] = {band = band, flow = flow, sha = sha, args = {}}
    end
    local fargs = flowed[fkey].args
    fargs[#fargs + 1] = score
    fargs[#fargs + 1] = id
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
for fkey, f in pairs(flowed) do
  send('ZADD', fkey, 'NX', f.args)
  flow_join(f.band, f.flow, f.sha)  -- once per flow: its tenant's sets learn its head
end
push_wakeups(KEYS[3], wakeups, ARGV[1])
return wakeups
