-- Atomically pop the best jobs (up to count) this worker may run now and record them in the
-- processing set, keeping every type's and tenant's limits and the tenants' fair shares.
-- KEYS: delayed, job-meta, processing, high, medium, low, sched, wakeup, counters
-- ARGV: lease_ms, promote_limit, bands ("hml" subset), capabilities (",a,b,"), count, and
-- what the call carries for forget.lua: the ids of jobs completed since the worker's last call
-- joined by "," (or ""), counter increments "field=n,..." (or ""), wakeup_cap
-- Returns {job ids joined by "," or "", ms until a job held back by time (delayed, or waiting
-- for a rate limit's token) may run, or -1, the ids among them counted under a max_running
-- limit joined by ","} (the lease statement checks those against PostgreSQL's count too).
--
-- Per band, best first: the tenants with a flow this worker may serve and whose limits admit
-- it take turns by weighted fair share (stride scheduling: the tenant with the lowest pass
-- goes next and its pass grows by 1/weight; a tenant that was idle comes back at the band's
-- virtual time, without credit; equal passes go by name). Inside a tenant, its admissible
-- flow with the lowest head score goes: priority, then age. A tenant or flow held back by a
-- limit is parked (sched.lua), so jobs over quota never block the jobs behind them, and are
-- not looked at again until their limit can admit them: each step is O(log n) in the number
-- of tenants and flows.
SCHED = KEYS[7]
local lease_ms = tonumber(ARGV[1])
local promote_limit = tonumber(ARGV[2])
local bands = ARGV[3]
local caps = ARGV[4]
local count = tonumber(ARGV[5])
local now = now_ms()
local lease_score = string.format('%.0f', now + lease_ms)
local queues = {h = KEYS[4], m = KEYS[5], l = KEYS[6]}

-- The worker's completions since its last call ride here instead of in a forget call of their
-- own (one Redis call per worker cycle): out of the index and their limits first, so the
-- places they free are free for this call too.
local carried = split_ids(ARGV[6])
if #carried > 0 then
  local wake = forget_jobs({KEYS[4], KEYS[5], KEYS[6], KEYS[1], KEYS[3], KEYS[2]}, carried)
  push_wakeups(KEYS[8], wake, ARGV[8])
  bump_counters(KEYS[9], ARGV[7])
end

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

-- ms until a rate-limited field with under one token has one again
local function token_wait_ms(st)
  return math.ceil((1 - st.tokens) * 1000 / st.lim.rate)
end

local function note_rate_wait(st)
  local ms = token_wait_ms(st)
  if rate_wait < 0 or ms < rate_wait then rate_wait = ms end
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
    note_rate_wait(st)
    return false
  end
  return true
end

-- What the main loop takes is counted here and written once at the end of the call (the
-- loop reads the counts from `states`, never from Redis).
local taken, bucket_dirty = {}, {}

-- one command over many arguments, in chunks Lua's stack takes (an even size: pairs stay whole)
local function call_in_chunks(cmd, key, args)
  for i = 1, #args, 1000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
  end
end

local function take(field)
  local st = state_of(field)
  taken[field] = (taken[field] or 0) + 1
  if st.running then st.running = st.running + 1 end
  if st.tokens then
    st.tokens = st.tokens - 1
    bucket_dirty[field] = true
  end
end

-- Parked entries whose limit can admit again: tenants whose rate bucket has refilled, and
-- as many flows of each held-back type as it has room for (lowest pass first).
local refilled = redis.call('ZRANGEBYSCORE', SCHED .. ':ptimer', '-inf', now, 'LIMIT', 0, 100)
for _, field in ipairs(refilled) do unpark_tenant(field) end
for _, field in ipairs(redis.call('SMEMBERS', SCHED .. ':parkedtypes')) do
  local st = state_of(field)
  local room = count
  if st.running then room = math.min(room, st.lim.max - st.running) end
  if st.tokens then
    room = math.min(room, math.floor(st.tokens))
    if st.tokens < 1 then note_rate_wait(st) end
  end
  if room > 0 and unpark(field, room) < room then
    redis.call('SREM', SCHED .. ':parkedtypes', field)
  end
end

-- Held back by its tenant's limit: park the tenant's turn (a rate limit says when its next
-- token comes; a max_running limit gives the turn back when a lease ends).
local function park_tenant(tq, band, cap, tenant, field, pass)
  park(field, band, cap, tenant, '', pass, false)
  redis.call('ZREM', tq, tenant)
  local st = state_of(field)
  if not (st.running and st.running >= st.lim.max) and st.tokens and st.tokens < 1 then
    redis.call('ZADD', SCHED .. ':ptimer', string.format('%.0f', now + token_wait_ms(st)),
               field)
  end
end

-- The tenant's flow to serve in (band, cap): the lowest head its type's limit admits. Stale
-- scores are corrected, empty flows dropped, flows of a held-back type parked on the way.
local flow_names = {}  -- band .. sha -> the flow (read once per call)
local function flow_of_sha(band, sha)
  local k = band .. sha
  local flow = flow_names[k]
  if flow == nil then
    flow = redis.call('HGET', SCHED .. ':flows:' .. band, sha) or false
    flow_names[k] = flow
  end
  return flow
end

local function pick_flow(band, cap, tenant, tf, pass)
  while true do
    local fh = redis.call('ZRANGE', tf, 0, 0, 'WITHSCORES')
    if #fh == 0 then return nil end
    local sha = fh[1]
    local key = flow_key(band, sha)
    -- the head and the one behind it: the flow's next head once the head is taken
    local qh = redis.call('ZRANGE', key, 0, 1, 'WITHSCORES')
    local flow = #qh > 0 and flow_of_sha(band, sha)
    if not flow then
      redis.call('ZREM', tf, sha)
    elseif tonumber(qh[2]) ~= tonumber(fh[2]) then
      redis.call('ZADD', tf, qh[2], sha)
    else
      local jt = split_flow(flow)
      local field = 'job_type' .. NUL .. jt
      if admits(field) then
        return {key = key, sha = sha, flow = flow, field = field, id = qh[1],
                next_score = qh[4]}
      end
      park(field, band, cap, tenant, sha, pass, true)
      redis.call('ZREM', tf, sha)
    end
  end
end

local caplist = {''}
for c in string.gmatch(caps, '[^,]+') do caplist[#caplist + 1] = c end

local found, limited = {}, {}
local leased = {}  -- score, id pairs for the processing set, written at the end
for b = 1, #bands do
  if #found >= count then break end
  local band = string.sub(bands, b, b)
  local pass_key = SCHED .. ':pass:' .. band
  local sets = {}
  for i, c in ipairs(caplist) do sets[i] = {key = tq_key(band, c), cap = c} end
  local vt = tonumber(redis.call('HGET', pass_key, NUL .. 'vt') or '0')
  local vt_moved = false
  -- tenants' passes in this band: read once, kept here, written at the end of the band
  -- (false: to be deleted)
  local passes, pass_dirty = {}, {}
  local popped = {}  -- ids taken out of the band's priority queue
  local function stored_pass(tenant)
    local p = passes[tenant]
    if p == nil then
      p = tonumber(redis.call('HGET', pass_key, tenant) or '0')
      passes[tenant] = p
    end
    return p
  end
  while #found < count do
    -- whose turn: the lowest pass at the heads of the worker's capability sets
    local tenant, pass, set
    for _, s in ipairs(sets) do
      local head = redis.call('ZRANGE', s.key, 0, 0, 'WITHSCORES')
      if #head > 0 and (not tenant or tonumber(head[2]) < pass) then
        tenant, pass, set = head[1], tonumber(head[2]), s
      end
    end
    if not tenant then break end
    local stored = stored_pass(tenant)
    local tfield = 'tenant' .. NUL .. tenant
    local tf = tf_key(band, tenant, set.cap)
    if stored > pass then
      -- served through another capability set since it joined this one: its place is later
      redis.call('ZADD', set.key, 'XX', fmt_pass(stored), tenant)
    elseif not admits(tfield) then
      park_tenant(set.key, band, set.cap, tenant, tfield, pass)
    else
      local pick = pick_flow(band, set.cap, tenant, tf, pass)
      if not pick then
        redis.call('ZREM', set.key, tenant)
        if stored <= vt then
          passes[tenant], pass_dirty[tenant] = 0, false
        end
      else
        local id = pick.id
        redis.call('ZREM', pick.key, id)
        popped[#popped + 1] = id
        if redis.call('HEXISTS', KEYS[2], id) == 1 then
          leased[#leased + 1] = lease_score
          leased[#leased + 1] = id
          -- an id already held (a stale duplicate entry) is not counted twice
          if redis.call('HSETNX', SCHED .. ':held', id, pick.flow) == 1 then
            take(tfield)
            take(pick.field)
          end
          found[#found + 1] = id
          if state_of(tfield).running or state_of(pick.field).running then
            limited[#limited + 1] = id
          end
          local lim = limit_of(tfield)
          -- kept as written (rounded), as a read back from Redis would give it
          local next_pass = fmt_pass(pass + 1 / ((lim and lim.weight) or 1))
          passes[tenant], pass_dirty[tenant] = tonumber(next_pass), true
          redis.call('ZADD', set.key, 'XX', next_pass, tenant)
          vt, vt_moved = pass, true
        end  -- else: no live job behind it; dropped
        if pick.next_score then
          redis.call('ZADD', tf, pick.next_score, pick.sha)
        else
          redis.call('ZREM', tf, pick.sha)
          if redis.call('ZCARD', tf) == 0 then redis.call('ZREM', set.key, tenant) end
        end
      end
    end
  end
  local set_args, gone = {}, {}
  for tenant, dirty in pairs(pass_dirty) do
    if dirty then
      set_args[#set_args + 1] = tenant
      set_args[#set_args + 1] = fmt_pass(passes[tenant])
    else
      gone[#gone + 1] = tenant
    end
  end
  if vt_moved then
    set_args[#set_args + 1] = NUL .. 'vt'
    set_args[#set_args + 1] = fmt_pass(vt)
  end
  call_in_chunks('HDEL', pass_key, gone)
  call_in_chunks('HSET', pass_key, set_args)
  call_in_chunks('ZREM', queues[band], popped)
end
call_in_chunks('ZADD', KEYS[3], leased)
for field, n in pairs(taken) do redis.call('HINCRBY', SCHED .. ':running', field, n) end
for field in pairs(bucket_dirty) do
  redis.call('HSET', SCHED .. ':buckets', field,
             string.format('%.6f', states[field].tokens) .. ',' .. now)
end
for field in pairs(waited) do redis.call('HINCRBY', SCHED .. ':waits', field, 1) end

local next_due = rate_wait
for _, key in ipairs({KEYS[1], SCHED .. ':ptimer'}) do  -- a delayed job, a parked rate
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local ms = math.max(0, tonumber(first[2]) - now)
    if next_due < 0 or ms < next_due then next_due = ms end
  end
end
return {table.concat(found, ','), string.format('%.0f', next_due), table.concat(limited, ',')}
