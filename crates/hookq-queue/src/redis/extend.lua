-- extend: push the lease deadline of holds that still exist to now + lease,
-- and return the tokens whose hold is gone (reclaimed by a receive after it
-- expired, or acked): their jobs are no longer the caller's.
--
-- KEYS: 1 leases
-- ARGV: 1 lease ms, 2.. tokens
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = string.format('%d', now + tonumber(ARGV[1]))
-- One ZMSCORE and one ZADD per chunk of tokens (unpack has a stack limit).
-- XX: a token that is absent is not brought back.
local gone, chunk = {}, 500
for i = 2, #ARGV, chunk do
  local last = math.min(i + chunk - 1, #ARGV)
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, i, last))
  local args = {}
  for j = i, last do
    if scores[j - i + 1] then
      args[#args + 1] = deadline
      args[#args + 1] = ARGV[j]
    else
      gone[#gone + 1] = ARGV[j]
    end
  end
  if #args > 0 then
    redis.call('ZADD', KEYS[1], 'XX', unpack(args))
  end
end
return gone
