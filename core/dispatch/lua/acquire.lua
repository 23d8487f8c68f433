-- Atomically pop the best jobs (up to count) this worker may run now and record them in the
-- processing set, keeping every type's and tenant's limits and the tenants' fair shares.
-- KEYS: delayed, job-meta, processing, high, medium, low, sched
-- ARGV: lease_ms, promote_limit, bands ("hml" subset), capabilities (",a,b,"), count
-- Returns {job ids joined by "," or "", ms until a job held back by time (delayed, or waiting
-- for a rate limit's token) may run, or -1, the ids among them counted under a max_running
-- limit joined by ","} (the lease statement checks those against PostgreSQL's count too).
--
-- Per band, best first: the tenants with a flow this worker may serve and whose limits admit
-- it take turns by weighted fair share (stride scheduling: the tenant with the lowest pass
-- goes next and its pass grows by 1/weight; a tenant that was idle comes back at the band's
-- virtual time, without credit). Inside a tenant, its admissible flow with the lowest head
-- score goes: priority, then age. A flow held back by a limit is passed over whole, so jobs
-- over quota never block the jobs behind them.
SCHED = KEYS[7]
local lease_ms = tonumber(ARGV[1])
local promote_limit = tonumber(ARGV[2])
local bands = ARGV[3]
local caps = ARGV[4]
local count = tonumber(ARGV[5])
local now = now_ms()
local queues = {h = KEYS[4], m = KEYS[5], l = KEYS[6]}

-- Promote delayed jobs that are due, keeping FIFO by due time within a priority.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, promote_limit)
for i = 1, #due, 2 do
  local id = due[i]
  local meta = redis.call('HGET', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  if meta then
    local prio, flow = parse_meta(meta)
    local band = band_of(prio)
    local score = string.format('%.0f', (6 - prio) * 1e13 + tonumber(due[i + 1]))
    redis.call('ZADD', queues[band], score, id)
    flow_add(band, flow, score, id)
  end
end

-- Limit state of a scope field, read once per call and kept up to date locally.
local states = {}
local rate_wait = -1  -- ms until the first token of a rate-limited flow held back
local waited = {}
local function state_of(field)
  local st = states[field]
  if st == nil then
    local lim = limit_of(field)
    st = {lim = lim}
    if lim and lim.max then
      st.running = tonumber(redis.call('HGET', SCHED .. ':running', field) or '0')
    end
    if lim and lim.rate then
      local raw = redis.call('HGET', SCHED .. ':buckets', field)
      local tokens, last = lim.burst, now
      if raw then
        local t, l = string.match(raw, '^([^,]+),([^,]+)$')
        tokens, last = tonumber(t), tonumber(l)
      end
      st.tokens = math.min(lim.burst, tokens + math.max(0, now - last) * lim.rate / 1000)
    end
    states[field] = st
  end
  return st
end

local function admits(field)
  local st = state_of(field)
  if not st.lim then return true end
  if st.running and st.running >= st.lim.max then
    waited[field] = true
    return false
  end
  if st.tokens and st.tokens < 1 then
    waited[field] = true
    local ms = math.ceil((1 - st.tokens) * 1000 / st.lim.rate)
    if rate_wait < 0 or ms < rate_wait then rate_wait = ms end
    return false
  end
  return true
end

local function take(field)
  local st = state_of(field)
  redis.call('HINCRBY', SCHED .. ':running', field, 1)
  if st.running then st.running = st.running + 1 end
  if st.tokens then
    st.tokens = st.tokens - 1
    redis.call('HSET', SCHED .. ':buckets', field, string.format('%.6f', st.tokens) .. ',' .. now)
  end
end

local found, limited = {}, {}
for b = 1, #bands do
  if #found >= count then break end
  local band = string.sub(bands, b, b)
  local registry = SCHED .. ':flows:' .. band
  local pass_key = SCHED .. ':pass:' .. band
  -- tenant -> its flows this worker may serve: {key, type, flow, id, score}
  local tenants, ntenants = {}, 0
  local all = redis.call('HGETALL', registry)
  for i = 1, #all, 2 do
    local sha, flow = all[i], all[i + 1]
    local jt, tenant, cap = split_flow(flow)
    if cap == '' or string.find(caps, ',' .. cap .. ',', 1, true) then
      local key = SCHED .. ':flow:' .. band .. ':' .. sha
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #head == 0 then
        redis.call('HDEL', registry, sha)
      else
        local t = tenants[tenant]
        if not t then
          t = {flows = {}, field = 'tenant' .. NUL .. tenant}
          tenants[tenant] = t
          ntenants = ntenants + 1
        end
        t.flows[#t.flows + 1] = {key = key, field = 'job_type' .. NUL .. jt, flow = flow,
                                 id = head[1], score = tonumber(head[2])}
      end
    end
  end
  if ntenants > 0 then
    -- passes matter only between tenants: one alone in the band is served without them (a
    -- tenant arriving later starts from the band's virtual time, as any returning one does)
    local shared = ntenants > 1
    local vt = shared and tonumber(redis.call('HGET', pass_key, NUL .. 'vt') or '0') or 0
    local passes = {}
    while #found < count do
      local best, best_flow, best_pass
      for tenant, t in pairs(tenants) do
        if admits(t.field) then
          local pick
          for _, f in ipairs(t.flows) do
            if f.id and (not pick or f.score < pick.score) and admits(f.field) then pick = f end
          end
          if pick then
            local p = passes[tenant]
            if p == nil then
              p = shared and math.max(tonumber(redis.call('HGET', pass_key, tenant) or '0'), vt)
                  or 0
              passes[tenant] = p
            end
            if not best or p < best_pass or (p == best_pass and pick.score < best_flow.score) then
              best, best_flow, best_pass = tenant, pick, p
            end
          end
        end
      end
      if not best then break end
      local id = best_flow.id
      redis.call('ZREM', best_flow.key, id)
      redis.call('ZREM', queues[band], id)
      if redis.call('HEXISTS', KEYS[2], id) == 1 then
        redis.call('ZADD', KEYS[3], string.format('%.0f', now + lease_ms), id)
        -- an id already held (a stale duplicate entry) is not counted twice
        if redis.call('HSETNX', SCHED .. ':held', id, best_flow.flow) == 1 then
          take(tenants[best].field)
          take(best_flow.field)
        end
        found[#found + 1] = id
        if state_of(tenants[best].field).running or state_of(best_flow.field).running then
          limited[#limited + 1] = id
        end
        local lim = limit_of(tenants[best].field)
        local weight = (lim and lim.weight) or 1
        passes[best] = best_pass + 1 / weight
        vt = best_pass
      end  -- else: no live job behind it; dropped
      local head = redis.call('ZRANGE', best_flow.key, 0, 0, 'WITHSCORES')
      if #head == 0 then
        best_flow.id = nil
      else
        best_flow.id, best_flow.score = head[1], tonumber(head[2])
      end
    end
    if shared then
      for tenant, p in pairs(passes) do
        redis.call('HSET', pass_key, tenant, string.format('%.9f', p))
      end
      redis.call('HSET', pass_key, NUL .. 'vt', string.format('%.9f', vt))
    end
  end
end
for field in pairs(waited) do redis.call('HINCRBY', SCHED .. ':waits', field, 1) end

local next_due = rate_wait
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first > 0 then
  local ms = math.max(0, tonumber(first[2]) - now)
  if next_due < 0 or ms < next_due then next_due = ms end
end
return {table.concat(found, ','), string.format('%.0f', next_due), table.concat(limited, ',')}
