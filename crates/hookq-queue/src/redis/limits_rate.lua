-- One take from a token bucket (crates/hookq-queue/src/limits.rs, take_token,
-- does the same arithmetic for the memory store).
-- KEYS[1] the bucket: a hash {tokens, at, booked}
-- ARGV[1] tokens per second, ARGV[2] burst
-- Returns 0 when a token was taken, else the ms until the caller's booked
-- slot: when its token is due, at least one token's time after the slot
-- booked last. Times are the Redis server's, so workers' clocks do not matter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per_ms = tonumber(ARGV[1]) / 1000
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'booked')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
local booked = tonumber(b[3]) or 0
tokens = math.min(burst, tokens + math.max(0, now - at) * per_ms)
at = math.max(at, now)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  local step = math.ceil(1 / per_ms)
  local due = now + math.ceil((1 - tokens) / per_ms)
  local slot = math.max(due, booked + step)
  booked = slot
  wait = slot - now
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at), 'booked', tostring(booked))
-- A bucket untouched for its refill time plus a minute is full again: no need to keep it.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / per_ms) + math.max(0, booked - now) + 60000)
return wait
