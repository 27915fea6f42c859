-- push: ready jobs to the back of the queue, delayed ones to the delayed set
-- with a due time in the server's clock. Used when a push has delayed jobs;
-- a push of ready jobs only is a plain LPUSH.
--
-- KEYS: 1 ready, 2 delayed, 3 seq
-- ARGV: 1 n, the number of ready bodies; 2..n+1 the ready bodies; then pairs
--       (delay ms, body)
local ready, delayed, seq = KEYS[1], KEYS[2], KEYS[3]
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  redis.call('LPUSH', ready, ARGV[i])
end
local start = n + 2
local m = (#ARGV - n - 1) / 2
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
