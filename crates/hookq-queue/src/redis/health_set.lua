-- health_set: change an endpoint's circuit if its record's version is still
-- the one the caller decided from (hookq_queue::health::HealthRecord::apply
-- and ::enable do the same for the memory store), keep the set of disabled
-- endpoints, and end any probe claim (an 'open' keeps the claim taken until
-- the open time is over, so a worker deciding from an older record cannot
-- send a second probe meanwhile). Returns the new record's JSON (for
-- 'enable': the record before), or false when the version moved on (or,
-- for 'enable', there is no record).
--
-- KEYS: 1 the health hash, 2 the disabled set, 3 the probe claim
-- ARGV: 1 field (app\nendpoint), 2 'open' | 'close' | 'disable' | 'enable',
--       3 the expected version (-1: any), 4 ms (open: until; others: now),
--       5 (open) ms from now until then
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local mode = ARGV[2]
if not raw and mode == 'enable' then
  return false
end
local r
if raw then
  r = cjson.decode(raw)
else
  r = {state = 'closed', open_until_ms = 0, version = 0, bucket = 0,
       cur_ok = 0, cur_fail = 0, prev_ok = 0, prev_fail = 0}
end
local expected = tonumber(ARGV[3])
if expected >= 0 and r.version ~= expected then
  return false
end
r.version = r.version + 1
local t = tonumber(ARGV[4])
if mode == 'open' then
  r.state = 'open'
  r.open_until_ms = t
elseif mode == 'disable' then
  r.state = 'disabled'
  r.disabled_at_ms = t
else
  r.state = 'closed'
  r.open_until_ms = 0
  r.failing_since_ms = nil
  r.cur_ok, r.cur_fail, r.prev_ok, r.prev_fail = 0, 0, 0, 0
  if mode == 'close' then
    if r.last_success_ms == nil or r.last_success_ms < t then r.last_success_ms = t end
  else
    r.disabled_at_ms = nil
  end
end
if r.state == 'disabled' then
  redis.call('SADD', KEYS[2], ARGV[1])
else
  redis.call('SREM', KEYS[2], ARGV[1])
end
if mode == 'open' and tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[3], 1, 'PX', ARGV[5])
else
  redis.call('DEL', KEYS[3])
end
local out = cjson.encode(r)
redis.call('HSET', KEYS[1], ARGV[1], out)
if mode == 'enable' then
  return raw
end
return out
