-- Atomically pop the best jobs (up to count) this worker may run and record them in the
-- processing set.
-- KEYS: delayed, job-meta, processing, high, medium, low
-- ARGV: lease_ms, scan_window, promote_limit, bands ("hml" subset), capabilities (",a,b,"),
--       count (1 when absent)
-- Returns {job ids joined by "," or "", ms until the earliest delayed job is due, or -1}.
local lease_ms = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local promote_limit = tonumber(ARGV[3])
local bands = ARGV[4]
local caps = ARGV[5]
local count = tonumber(ARGV[6] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local queues = {h = KEYS[4], m = KEYS[5], l = KEYS[6]}

local function queue_of(prio)
  if prio >= 4 then return KEYS[4] elseif prio >= 2 then return KEYS[5] else return KEYS[6] end
end

-- Promote delayed jobs that are due, keeping FIFO by due time within a priority.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, promote_limit)
for i = 1, #due, 2 do
  local id = due[i]
  local meta = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  if meta then
    local prio = tonumber(string.match(meta, '^(%d+)'))
    redis.call('ZADD', queue_of(prio), string.format('%.0f', (6 - prio) * 1e13 + tonumber(due[i + 1])), id)
  end
end

local found = {}
local page = 16
for b = 1, #bands do
  local q = queues[string.sub(bands, b, b)]
  local start = 0
  while #found < count and start < window do
    -- removing an entry shifts ranks, so re-read from where the scan stands
    local ids = redis.call('ZRANGE', q, start, math.min(start + page, window) - 1)
    if #ids == 0 then break end
    local removed = 0
    for _, id in ipairs(ids) do
      local meta = redis.call('HGET', KEYS[2], id)
      if not meta then
        redis.call('ZREM', q, id)  -- no live job behind it
        removed = removed + 1
      else
        local cap = string.match(meta, '^%d+|(.*)$') or ''
        if cap == '' or string.find(caps, ',' .. cap .. ',', 1, true) then
          redis.call('ZREM', q, id)
          redis.call('ZADD', KEYS[3], string.format('%.0f', now + lease_ms), id)
          removed = removed + 1
          found[#found + 1] = id
          if #found >= count then break end
        end
      end
    end
    start = start + #ids - removed
  end
  if #found >= count then break end
end

local next_due = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first > 0 then next_due = math.max(0, tonumber(first[2]) - now) end
return {table.concat(found, ','), string.format('%.0f', next_due)}
