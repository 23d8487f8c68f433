-- Move queued jobs to the queue of their new priority, keeping their place in time (FIFO
-- within a priority), and record the new priority in their metadata (a delayed job is then
-- promoted into the right queue; a running one is only re-labelled).
-- KEYS: job-meta, high, medium, low
-- ARGV: job ids joined by ","; their new priorities, one digit each
local function queue_of(prio)
  if prio >= 4 then return KEYS[2] elseif prio >= 2 then return KEYS[3] else return KEYS[4] end
end
local moved, i = 0, 0
for id in string.gmatch(ARGV[1], '[^,]+') do
  i = i + 1
  local prio = tonumber(string.sub(ARGV[2], i, i))
  local meta = redis.call('HGET', KEYS[1], id)
  if meta then
    local old = tonumber(string.match(meta, '^(%d+)'))
    local cap = string.match(meta, '^%d+|(.*)$') or ''
    redis.call('HSET', KEYS[1], id, prio .. '|' .. cap)
    local q = queue_of(old)
    local score = redis.call('ZSCORE', q, id)
    if score then
      local at = tonumber(score) - (6 - old) * 1e13
      redis.call('ZREM', q, id)
      redis.call('ZADD', queue_of(prio), string.format('%.0f', (6 - prio) * 1e13 + at), id)
      moved = moved + 1
    end
  end
end
return moved
