-- push_each: several keyed pushes of ready jobs in one call (the ingest's
-- group commit). Each group is pushed only if its key was not set within
-- its window, the key set in the same step, as push.lua does for one.
--
-- KEYS: 1 ready, 2..g+1 the groups' keys
-- ARGV: pairs (window ms, n) for the g groups (a window of '0': no key, the
--       group is pushed whatever), then every group's n bodies in order
-- Returns, per group, the number of jobs pushed, or -1 when its key was set;
-- then 1 when ready was empty and something was pushed, else 0 (on a shard
-- other than 0 the driver then pushes the wake marker to shard 0, see
-- push.lua).
local ready = KEYS[1]
local g = #KEYS - 1
local was_empty = redis.call('LLEN', ready) == 0
local pushed = false
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
    pushed = pushed or n > 0
  else
    answers[i] = -1
  end
  at = at + n
end
answers[g + 1] = (was_empty and pushed) and 1 or 0
return answers
