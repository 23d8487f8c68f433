-- Remove jobs from every dispatch set, and record them in the dead-letter set when asked.
-- KEYS: high, medium, low, delayed, processing, job-meta, dead-letter
-- ARGV: "1" to record them dead (scored by Redis' clock, ms) else "0"; job ids joined by ","
-- One script call instead of a MULTI/EXEC of six commands: cheaper for the client to send.
local ids = {}
for id in string.gmatch(ARGV[2], '[^,]+') do ids[#ids + 1] = id end
local now
if ARGV[1] == '1' then
  local t = redis.call('TIME')
  now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
for s = 1, #ids, 500 do
  local chunk = {unpack(ids, s, math.min(s + 499, #ids))}
  for k = 1, 5 do redis.call('ZREM', KEYS[k], unpack(chunk)) end
  redis.call('HDEL', KEYS[6], unpack(chunk))
  if now then
    local args = {}
    for _, id in ipairs(chunk) do
      args[#args + 1] = now
      args[#args + 1] = id
    end
    redis.call('ZADD', KEYS[7], unpack(args))
  end
end
return #ids
