-- Shared by the dispatch scripts (prepended to each): flows, limits and fair shares.
--
-- A job's metadata (hash job-meta) is "priority|flow" where the flow is
-- "job_type \0 tenant \0 capability" (NUL never occurs in these texts: they are refused on
-- input). Jobs of one flow are interchangeable for every scheduling decision, so besides its
-- priority queue (the seed's key, kept as the index of record) each due job also waits in
-- its flow's queue, {sched}:flow:{band}:{sha1 of flow}, with the same score; the hash
-- {sched}:flows:{band} maps each flow's sha1 to the flow.
--
-- Every step of an acquisition costs O(log n) whatever the number of tenants, types and
-- flows, because nothing is scanned:
--   {sched}:tq:{band}:{sha1 of capability}  the tenants with a queued flow of that
--       capability ('' for none) in the band, scored by their fair-share pass: the head is
--       the tenant whose turn it is;
--   {sched}:tf:{band}:{sha1 of tenant \0 capability}  that tenant's flows, scored by the
--       score of their head job (priority, then age): the head is the flow to serve.
-- A score there is never above the truth (a removal may leave it below: the acquisition
-- corrects it when it meets it). A tenant or flow held back by a limit is not passed over
-- again and again: it is parked, moved out of these sets into {sched}:pk:{sha1 of the limit's
-- field} ("band \0 capability \0 tenant \0 flow sha1", '' for a tenant's whole turn), and
-- comes back when the limit can admit again: a tenant's when one of its leases ends
-- (release_held), its limit changes, or its rate bucket refills ({sched}:ptimer, field ->
-- ms); a type's flows by the acquisitions themselves, as many as the type has room for
-- ({sched}:parkedtypes lists the type fields with parked flows; there are few types).
--
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

-- a flow's queue, by the sha1 of the flow
local function flow_key(band, sha)
  return SCHED .. ':flow:' .. band .. ':' .. sha
end

local function tq_key(band, cap)
  return SCHED .. ':tq:' .. band .. ':' .. redis.sha1hex(cap)
end

local function tf_key(band, tenant, cap)
  return SCHED .. ':tf:' .. band .. ':' .. redis.sha1hex(tenant .. NUL .. cap)
end

local function pk_key(field)
  return SCHED .. ':pk:' .. redis.sha1hex(field)
end

local function fmt_pass(p)
  return string.format('%.9f', p)
end

-- a tenant with a queued flow of capability `cap` in the band waits for its turn there,
-- from its own pass or the band's virtual time, whichever is later (an idle tenant comes
-- back without credit)
local function tenant_join(band, tenant, cap)
  local tq = tq_key(band, cap)
  if redis.call('ZSCORE', tq, tenant) then return end
  local pass_key = SCHED .. ':pass:' .. band
  local p = tonumber(redis.call('HGET', pass_key, tenant) or '0')
  local vt = tonumber(redis.call('HGET', pass_key, NUL .. 'vt') or '0')
  redis.call('ZADD', tq, fmt_pass(math.max(p, vt)), tenant)
end

-- the flow (sha1 `sha`) has queued jobs: its tenant's flow set gets its head's exact score
local function flow_join(band, flow, sha)
  local head = redis.call('ZRANGE', flow_key(band, sha), 0, 0, 'WITHSCORES')
  if #head == 0 then return end
  redis.call('HSET', SCHED .. ':flows:' .. band, sha, flow)
  local _, tenant, cap = split_flow(flow)
  redis.call('ZADD', tf_key(band, tenant, cap), head[2], sha)
  tenant_join(band, tenant, cap)
end

-- queue a due job in its flow (NX: a job already queued keeps its place)
local function flow_add(band, flow, score, id)
  local sha = redis.sha1hex(flow)
  redis.call('ZADD', flow_key(band, sha), 'NX', score, id)
  flow_join(band, flow, sha)
end

-- park an entry under a limit's field until the limit can admit it again
local function park(field, band, cap, tenant, sha, pass, is_type)
  redis.call('ZADD', pk_key(field), fmt_pass(pass),
             band .. NUL .. cap .. NUL .. tenant .. NUL .. sha)
  if is_type then redis.call('SADD', SCHED .. ':parkedtypes', field) end
end

-- bring parked entries back into the sets (`n` of them, lowest pass first; nil: all)
local function unpark(field, n)
  local key = pk_key(field)
  local entries
  if n then
    entries = redis.call('ZPOPMIN', key, n)
  else
    entries = redis.call('ZRANGE', key, 0, -1)
    redis.call('DEL', key)
  end
  local step = n and 2 or 1
  for i = 1, #entries, step do
    local e = entries[i]
    local a = string.find(e, NUL, 1, true)
    local b = string.find(e, NUL, a + 1, true)
    local c = string.find(e, NUL, b + 1, true)
    local band, cap, tenant, sha = string.sub(e, 1, a - 1), string.sub(e, a + 1, b - 1),
        string.sub(e, b + 1, c - 1), string.sub(e, c + 1)
    if sha ~= '' then
      local flow = redis.call('HGET', SCHED .. ':flows:' .. band, sha)
      if flow then flow_join(band, flow, sha) end
    elseif redis.call('ZCARD', tf_key(band, tenant, cap)) > 0 then
      tenant_join(band, tenant, cap)
    end
  end
  return #entries / step
end

-- a tenant's parked turns come back (its limit changed or a place was freed); a type's
-- field is left to the acquisitions, which bring back as many flows as it has room for
local function unpark_tenant(field)
  if string.sub(field, 1, 7) ~= 'tenant' .. NUL then return end
  unpark(field, nil)
  redis.call('ZREM', SCHED .. ':ptimer', field)
end

-- take jobs of one flow (a list of ids, at most a few hundred) out of its queues
local function flow_remove(flow, ids)
  local sha = redis.sha1hex(flow)
  for _, band in ipairs({'h', 'm', 'l'}) do
    redis.call('ZREM', flow_key(band, sha), unpack(ids))
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

-- Leased jobs (distinct ids, at most a few hundred) stop counting against their types' and
-- tenants' limits: one read of what they were counted under, one write per limit field.
-- Returns how many of them counted under a max_running limit (each frees a place a waiting
-- job may now take).
local function release_held(ids)
  local flows = redis.call('HMGET', SCHED .. ':held', unpack(ids))
  local gone, counts, freed = {}, {}, 0
  for k, id in ipairs(ids) do
    local flow = flows[k]
    if flow then
      gone[#gone + 1] = id
      local jt, tenant = split_flow(flow)
      local limited = false
      for _, field in ipairs({'job_type' .. NUL .. jt, 'tenant' .. NUL .. tenant}) do
        counts[field] = (counts[field] or 0) + 1
        local lim = limit_of(field)
        if lim and lim.max then limited = true end
      end
      if limited then freed = freed + 1 end
    end
  end
  if #gone == 0 then return 0 end
  redis.call('HDEL', SCHED .. ':held', unpack(gone))
  for field, n in pairs(counts) do
    if redis.call('HINCRBY', SCHED .. ':running', field, -n) <= 0 then
      redis.call('HDEL', SCHED .. ':running', field)
    end
    local lim = limit_of(field)
    if lim and lim.max then
      unpark_tenant(field)  -- the tenant's parked turns come back now
    end
  end
  return freed
end

-- ids joined by ',' as a list
local function split_ids(joined)
  local ids = {}
  for id in string.gmatch(joined or '', '[^,]+') do ids[#ids + 1] = id end
  return ids
end

-- the ids in chunks of at most 500 (what one command's arguments take), each id once (a
-- repeat is released once)
local function distinct_chunks(ids)
  local chunks, chunk, seen = {}, {}, {}
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      chunk[#chunk + 1] = id
      if #chunk == 500 then
        chunks[#chunks + 1] = chunk
        chunk = {}
      end
    end
  end
  if #chunk > 0 then chunks[#chunks + 1] = chunk end
  return chunks
end

-- counter increments "field=n,field=n" (or '') into the cluster counters hash
local function bump_counters(key, bumps)
  for field, n in string.gmatch(bumps or '', '([^,=]+)=(%d+)') do
    redis.call('HINCRBY', key, field, tonumber(n))
  end
end

-- Finished jobs out of every dispatch set (their priority queue, their flow's queue, the
-- delayed and processing sets, their metadata), no longer counted against their limits;
-- with `dead_score`, recorded in the dead-letter set with that score. q: {high, medium, low,
-- delayed, processing, job-meta, dead-letter}. Returns how many places under a max_running
-- limit they freed (forget.lua; the completions an acquisition carries, acquire.lua).
local function forget_jobs(q, ids, dead_score)
  local wake = 0
  for _, chunk in ipairs(distinct_chunks(ids)) do
    local metas = redis.call('HMGET', q[6], unpack(chunk))
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
    for k = 1, 5 do redis.call('ZREM', q[k], unpack(chunk)) end
    redis.call('HDEL', q[6], unpack(chunk))
    wake = wake + release_held(chunk)
    if dead_score then
      local args = {}
      for _, id in ipairs(chunk) do
        args[#args + 1] = dead_score
        args[#args + 1] = id
      end
      redis.call('ZADD', q[7], unpack(args))
    end
  end
  return wake
end
