-- health_sync: add one worker's outcomes for an endpoint to its record and
-- return the record as JSON (hookq_queue::health::HealthRecord::merge does
-- the same for the memory store). Outcomes of none only read.
--
-- KEYS: 1 the health hash
-- ARGV: 1 field (app\nendpoint), 2 now ms, 3 window ms, 4 successes,
--       5 failures, 6 last success ms, 7 last failure ms, 8 first failure
--       after the last success ms (0 for none in each), 9 last error
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local ok, failed = tonumber(ARGV[4]), tonumber(ARGV[5])
if ok + failed == 0 then
  return raw or false
end
local r
if raw then
  r = cjson.decode(raw)
else
  r = {state = 'closed', open_until_ms = 0, version = 0, bucket = 0,
       cur_ok = 0, cur_fail = 0, prev_ok = 0, prev_fail = 0}
end
local now, window = tonumber(ARGV[2]), math.max(tonumber(ARGV[3]), 1)
local bucket = math.floor(now / window)
if bucket > r.bucket then
  if bucket == r.bucket + 1 then
    r.prev_ok, r.prev_fail = r.cur_ok, r.cur_fail
  else
    r.prev_ok, r.prev_fail = 0, 0
  end
  r.cur_ok, r.cur_fail, r.bucket = 0, 0, bucket
end
r.cur_ok = r.cur_ok + ok
r.cur_fail = r.cur_fail + failed

local function opt(s)
  local n = tonumber(s)
  if n and n > 0 then return n end
  return nil
end
local function maxopt(a, b)
  if a == nil then return b end
  if b == nil then return a end
  return math.max(a, b)
end
r.last_success_ms = maxopt(r.last_success_ms, opt(ARGV[6]))
r.last_failure_ms = maxopt(r.last_failure_ms, opt(ARGV[7]))
if failed > 0 and ARGV[9] ~= '' then
  r.last_error = ARGV[9]
end
-- Failing since: the earliest failure after the last success.
local ls = r.last_success_ms
local function after(t)
  return t ~= nil and (ls == nil or t > ls)
end
local candidates = {r.failing_since_ms, opt(ARGV[8])}
local best = nil
for i = 1, 2 do
  local t = candidates[i]
  if after(t) and (best == nil or t < best) then best = t end
end
if best == nil and after(r.last_failure_ms) then best = r.last_failure_ms end
r.failing_since_ms = best

local out = cjson.encode(r)
redis.call('HSET', KEYS[1], ARGV[1], out)
return out
