-- Remove jobs from the dispatch index. Mode "forget": from every set (their job finished, was
-- cancelled, or goes back to wait); "dead": the same, and record them in the dead-letter set
-- (scored by Redis' clock, ms); "unlease": from the processing set only. A leased job stops
-- counting against its limits; when one of them caps how many may run, an idle worker is
-- woken to take the freed place.
-- Counters of how attempts ended, when given, go into the cluster counters hash in the same
-- call (no round trip of their own on a completion).
-- KEYS: high, medium, low, delayed, processing, job-meta, dead-letter, wakeup, sched, counters
-- ARGV: mode; job ids joined by ","; wakeup_cap; counter increments "field=n,field=n" or ""
-- One script call instead of a MULTI/EXEC of many commands: cheaper for the client to send.
SCHED = KEYS[9]
local mode = ARGV[1]
local ids = {}
for id in string.gmatch(ARGV[2], '[^,]+') do ids[#ids + 1] = id end
local now
if mode == 'dead' then now = string.format('%.0f', now_ms()) end
local wake = 0
for s = 1, #ids, 500 do
  local chunk, seen = {}, {}
  for k = s, math.min(s + 499, #ids) do  -- each id once (a repeat is released once)
    if not seen[ids[k]] then
      seen[ids[k]] = true
      chunk[#chunk + 1] = ids[k]
    end
  end
  if mode == 'unlease' then
    redis.call('ZREM', KEYS[5], unpack(chunk))
  else
    local metas = redis.call('HMGET', KEYS[6], unpack(chunk))
    -- the chunk's jobs by flow queue: one removal per queue. A job waits in its flow's queue
    -- of the band its priority (in its metadata) names: enqueue, promotion and
    -- reprioritize.lua keep the two together.
    local by_queue = {}
    for k, id in ipairs(chunk) do
      if metas[k] then
        local prio, flow = parse_meta(metas[k])
        local key = flow_key(band_of(prio), redis.sha1hex(flow))
        local of = by_queue[key]
        if not of then
          of = {}
          by_queue[key] = of
        end
        of[#of + 1] = id
      end
    end
    for key, of in pairs(by_queue) do redis.call('ZREM', key, unpack(of)) end
    for k = 1, 5 do redis.call('ZREM', KEYS[k], unpack(chunk)) end
    redis.call('HDEL', KEYS[6], unpack(chunk))
  end
  wake = wake + release_held(chunk)
  if now then
    local args = {}
    for _, id in ipairs(chunk) do
      args[#args + 1] = now
      args[#args + 1] = id
    end
    redis.call('ZADD', KEYS[7], unpack(args))
  end
end
push_wakeups(KEYS[8], wake, ARGV[3])
for field, n in string.gmatch(ARGV[4] or '', '([^,=]+)=(%d+)') do
  redis.call('HINCRBY', KEYS[10], field, tonumber(n))
end
return #ids
