-- push_each: several keyed pushes of ready jobs in one call (the ingest's
-- group commit). Each group is pushed only if its key was not set within
-- its window, the key set in the same step, as push.lua does for one.
--
-- KEYS: 1 ready, 2..g+1 the groups' keys
-- ARGV: pairs (window ms, n) for the g groups (a window of '0': no key, the
--       group is pushed whatever), then every group's n bodies in order
-- Returns, per group, the number of jobs pushed, or -1 when its key was set.
local ready = KEYS[1]
local g = #KEYS - 1
local answers = {}
local at = 2 * g + 1
for i = 1, g do
  local window, n = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  if window == '0' or redis.call('SET', KEYS[i + 1], '1', 'NX', 'PX', window) then
    -- One variadic LPUSH per chunk (unpack stays well within Lua's stack).
    for j = at, at + n - 1, 1000 do
      redis.call('LPUSH', ready, unpack(ARGV, j, math.min(j + 999, at + n - 1)))
    end
    answers[i] = n
  else
    answers[i] = -1
  end
  at = at + n
end
return answers
