-- extend: push the lease deadline of holds that still exist to now + lease.
--
-- KEYS: 1 leases
-- ARGV: 1 lease ms, 2.. tokens
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
local extended = 0
for i = 2, #ARGV do
  -- XX: a token that was reclaimed (absent) is not brought back.
  redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
  extended = extended + 1
end
return extended
