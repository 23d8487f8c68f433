-- Move queued jobs to the queue (and flow queue) of their new priority, keeping their place in
-- time (FIFO within a priority), and record the new priority in their metadata (a delayed job
-- is then promoted into the right queue; a running one is only re-labelled).
-- KEYS: job-meta, high, medium, low, sched
-- ARGV: job ids joined by ","; their new priorities, one digit each
SCHED = KEYS[5]
local queues = {h = KEYS[2], m = KEYS[3], l = KEYS[4]}
local moved, i = 0, 0
for id in string.gmatch(ARGV[1], '[^,]+') do
  i = i + 1
  local prio = tonumber(string.sub(ARGV[2], i, i))
  local meta = redis.call('HGET', KEYS[1], id)
  if meta then
    local old, flow = parse_meta(meta)
    redis.call('HSET', KEYS[1], id, prio .. '|' .. flow)
    local q = queues[band_of(old)]
    local score = redis.call('ZSCORE', q, id)
    if score then
      local at = tonumber(score) - (6 - old) * 1e13
      local new_score = string.format('%.0f', (6 - prio) * 1e13 + at)
      redis.call('ZREM', q, id)
      flow_remove(flow, {id})
      redis.call('ZADD', queues[band_of(prio)], new_score, id)
      flow_add(band_of(prio), flow, new_score, id)
      moved = moved + 1
    end
  end
end
return moved
