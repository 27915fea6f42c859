-- push: ready jobs to the back of the queue, delayed ones to the delayed set
-- with a due time in the server's clock; with a window, only when the push's
-- key was not set within it (push_once), the key set in the same step. Used
-- when a push has delayed jobs or a key; a push of ready jobs only is a
-- plain LPUSH.
--
-- KEYS: 1 ready, 2 delayed, 3 seq, 4 the push's key (read only with a window)
-- ARGV: 1 window ms (0: no key); 2 n, the number of ready bodies;
--       3..n+2 the ready bodies; then pairs (delay ms, body)
-- Returns the number of jobs pushed, or -1 when the key was already set.
local ready, delayed, seq = KEYS[1], KEYS[2], KEYS[3]
-- The window is passed on as the text it came as: a Lua number would be
-- formatted as a float for every call.
if ARGV[1] ~= '0' and not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[1]) then
  return -1
end
local n = tonumber(ARGV[2])
-- One variadic LPUSH per chunk (unpack stays well within Lua's stack).
for i = 3, n + 2, 1000 do
  redis.call('LPUSH', ready, unpack(ARGV, i, math.min(i + 999, n + 2)))
end
local start = n + 3
local m = (#ARGV - n - 2) / 2
if m >= 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local first = redis.call('INCRBY', seq, m) - m
  for j = 0, m - 1 do
    local delay = tonumber(ARGV[start + 2 * j])
    local body = ARGV[start + 2 * j + 1]
    -- The sequence number keeps identical bodies distinct members.
    redis.call('ZADD', delayed, now + delay, (first + j + 1) .. '|' .. body)
  end
end
return n + m
