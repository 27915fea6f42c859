-- wake: pushes the wake marker (see push.lua) to shard 0's ready list, where
-- every receiver blocks, unless that list holds something already (then no
-- receiver is blocked on it, or the marker is there). Called after a push to
-- another shard found that shard's ready list empty.
--
-- KEYS: 1 shard 0's ready
-- Returns 1 when it pushed the marker, else 0.
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('LPUSH', KEYS[1], '\0wake')
  return 1
end
return 0
