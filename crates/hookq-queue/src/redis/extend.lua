-- extend: push the lease deadline of holds that still exist to now + lease.
--
-- KEYS: 1 leases
-- ARGV: 1 lease ms, 2.. tokens
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = string.format('%d', now + tonumber(ARGV[1]))
-- One ZADD per chunk of tokens (unpack has a stack limit). XX: a token that
-- was reclaimed (absent) is not brought back.
local chunk = 500
for i = 2, #ARGV, chunk do
  local last = math.min(i + chunk - 1, #ARGV)
  local args = {}
  for j = i, last do
    args[#args + 1] = deadline
    args[#args + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(args))
end
return #ARGV - 1
