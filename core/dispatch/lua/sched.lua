-- Shared by the dispatch scripts (prepended to each): flows, limits and fair shares.
--
-- A job's metadata (hash job-meta) is "priority|flow" where the flow is
-- "job_type \0 tenant \0 capability" (NUL never occurs in these texts: they are refused on
-- input). Jobs of one flow are interchangeable for every scheduling decision, so besides its
-- priority queue (the seed's key, kept as the index of record) each due job also waits in
-- its flow's queue, {sched}:flow:{band}:{sha1 of flow}, with the same score. The flows of a
-- band are registered in the hash {sched}:flows:{band} (sha1 -> flow).
-- Limits live in {sched}:limits ("scope \0 name" -> "max_running,rate_per_s,burst,weight",
-- empty when unset); {sched}:running counts leased jobs per scope; {sched}:held records the
-- flow each leased job was counted under; {sched}:buckets holds token buckets
-- ("tokens,last_ms"); {sched}:pass:{band} the fair-share pass of each tenant ("\0vt": the
-- band's virtual time); {sched}:waits how often a limit held jobs back.
local SCHED -- the {sched} base key, set by each script from its KEYS
local NUL = '\0'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function band_of(prio)
  if prio >= 4 then return 'h' elseif prio >= 2 then return 'm' else return 'l' end
end

local function parse_meta(meta)
  local bar = string.find(meta, '|', 1, true)
  return tonumber(string.sub(meta, 1, bar - 1)), string.sub(meta, bar + 1)
end

-- job type, tenant ('' for none), capability ('' for none)
local function split_flow(flow)
  local a = string.find(flow, NUL, 1, true)
  if not a then return '', '', flow end
  local b = string.find(flow, NUL, a + 1, true)
  return string.sub(flow, 1, a - 1), string.sub(flow, a + 1, b - 1), string.sub(flow, b + 1)
end

local function flow_key(band, flow)
  return SCHED .. ':flow:' .. band .. ':' .. redis.sha1hex(flow)
end

-- queue a due job in its flow (NX: a job already queued keeps its place)
local function flow_add(band, flow, score, id)
  local sha = redis.sha1hex(flow)
  redis.call('ZADD', SCHED .. ':flow:' .. band .. ':' .. sha, 'NX', score, id)
  redis.call('HSET', SCHED .. ':flows:' .. band, sha, flow)
end

local function flow_remove(flow, id)
  local sha = redis.sha1hex(flow)
  for _, band in ipairs({'h', 'm', 'l'}) do
    redis.call('ZREM', SCHED .. ':flow:' .. band .. ':' .. sha, id)
  end
end

-- push n wake-up tokens (one per job that may now run), keeping the list within cap
local function push_wakeups(key, n, cap)
  if n <= 0 then return end
  local tokens = {}
  for k = 1, math.min(n, 1000) do tokens[k] = '1' end
  redis.call('LPUSH', key, unpack(tokens))
  redis.call('LTRIM', key, 0, tonumber(cap) - 1)
end

-- {max, rate, burst, weight} of a scope field, or false
local limit_cache = {}
local function limit_of(field)
  local lim = limit_cache[field]
  if lim == nil then
    lim = false
    local raw = redis.call('HGET', SCHED .. ':limits', field)
    if raw then
      local m, r, b, w = string.match(raw, '^([^,]*),([^,]*),([^,]*),([^,]*)$')
      if m then
        lim = {max = tonumber(m), rate = tonumber(r), burst = tonumber(b), weight = tonumber(w)}
        if lim.rate and not lim.burst then lim.burst = math.max(1, math.floor(lim.rate)) end
      end
    end
    limit_cache[field] = lim
  end
  return lim
end

-- A leased job stops counting against its type's and tenant's limits. Returns true when one
-- of them limits how many may run (a waiting job may now be admitted).
local function release_held(id)
  local flow = redis.call('HGET', SCHED .. ':held', id)
  if not flow then return false end
  redis.call('HDEL', SCHED .. ':held', id)
  local jt, tenant = split_flow(flow)
  local limited = false
  for _, field in ipairs({'job_type' .. NUL .. jt, 'tenant' .. NUL .. tenant}) do
    if redis.call('HINCRBY', SCHED .. ':running', field, -1) <= 0 then
      redis.call('HDEL', SCHED .. ':running', field)
    end
    local lim = limit_of(field)
    if lim and lim.max then limited = true end
  end
  return limited
end
