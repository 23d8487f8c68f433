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
local ids = split_ids(ARGV[2])
local wake = 0
if mode == 'unlease' then
  for _, chunk in ipairs(distinct_chunks(ids)) do
    redis.call('ZREM', KEYS[5], unpack(chunk))
    wake = wake + release_held(chunk)
  end
else
  local dead_score
  if mode == 'dead' then dead_score = string.format('%.0f', now_ms()) end
  wake = forget_jobs({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, ids,
                     dead_score)
end
push_wakeups(KEYS[8], wake, ARGV[3])
bump_counters(KEYS[10], ARGV[4])
return #ids
