-- ack: forget holds. A token whose lease expired and was reclaimed is no
-- longer there, so a late ack never touches the job's new hold.
--
-- KEYS: 1 held, 2 leases
-- ARGV: tokens
-- One HDEL and one ZREM per chunk of tokens (unpack has a stack limit).
local removed, chunk = 0, 1000
for i = 1, #ARGV, chunk do
  local last = math.min(i + chunk - 1, #ARGV)
  removed = removed + redis.call('HDEL', KEYS[1], unpack(ARGV, i, last))
  redis.call('ZREM', KEYS[2], unpack(ARGV, i, last))
end
return removed
