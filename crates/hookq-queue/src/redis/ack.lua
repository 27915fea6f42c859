-- ack: forget holds. A token whose lease expired and was reclaimed is no
-- longer there, so a late ack never touches the job's new hold.
--
-- KEYS: 1 held, 2 leases
-- ARGV: tokens
local removed = 0
for _, token in ipairs(ARGV) do
  removed = removed + redis.call('HDEL', KEYS[1], token)
  redis.call('ZREM', KEYS[2], token)
end
return removed
