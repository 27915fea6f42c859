-- push: ready jobs to the back of the queue, delayed ones to the delayed set
-- with a due time in the server's clock; with a window, only when the push's
-- key was not set within it (push_once), the key set in the same step. Used
-- when a push has delayed jobs or a key; a push of ready jobs only is a
-- plain LPUSH.
--
-- A receiver waiting on an empty ready list blocks until the earliest
-- delayed job it knew of is due (or a lease deadline, or its wait ends), so
-- a delayed job due sooner than every one already in the delayed set would
-- wait for that. Such a push, with no ready body and ready empty, also
-- pushes the wake marker WAKE to ready: it ends every receiver's block,
-- and the receive script drops it and tells them the new time to wait for.
-- A job due no sooner than one already delayed needs no marker: every
-- blocked receiver wakes by then (it knew of that one, or of one due
-- sooner, or was woken after it came). A push with ready bodies wakes them
-- itself, and a non-empty ready list has no receiver blocked on it. So at
-- most one marker is ever in ready, and an idle queue gets none.
--
-- With several shards, receivers block on shard 0's ready list only, so a
-- push to another shard cannot wake them itself: with ARGV[3] '0' the
-- script pushes no marker and answers whether one is needed on shard 0 —
-- when it found ready empty and pushed ready bodies (receivers may be
-- blocked: they found every shard empty) or a delayed job due sooner, as
-- above. The driver then pushes the marker there (wake.lua).
--
-- KEYS: 1 ready, 2 delayed, 3 seq, 4 the push's key (read only with a window)
-- ARGV: 1 window ms (0: no key); 2 n, the number of ready bodies;
--       3 '1': ready is where receivers block (push the marker here),
--       '0': answer whether a marker is needed instead;
--       4..n+3 the ready bodies; then pairs (delay ms, body)
-- Returns {pushed, wake}: the number of jobs pushed, or -1 when the key was
-- already set; and 1 when the caller must push the marker (ARGV[3] '0').
local ready, delayed, seq = KEYS[1], KEYS[2], KEYS[3]
-- The same in receive.lua. Job bodies are JSON, and a reclaimed job is
-- "\0<count>|<body>": nothing else is exactly this.
local WAKE = '\0wake'

-- The window is passed on as the text it came as: a Lua number would be
-- formatted as a float for every call.
if ARGV[1] ~= '0' and not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[1]) then
  return {-1, 0}
end
local n = tonumber(ARGV[2])
local here = ARGV[3] == '1'
-- Read only where it decides something (a plain push to the shard
-- receivers block on needs no marker).
local was_empty = (n == 0 or not here) and redis.call('LLEN', ready) == 0
local report = 0
if n > 0 and was_empty and not here then
  report = 1
end
-- One variadic LPUSH per chunk (unpack stays well within Lua's stack).
for i = 4, n + 3, 1000 do
  redis.call('LPUSH', ready, unpack(ARGV, i, math.min(i + 999, n + 3)))
end
local start = n + 4
local m = (#ARGV - n - 3) / 2
if m >= 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local first = redis.call('INCRBY', seq, m) - m
  -- Whether a receiver may be blocked on an empty ready list past the soonest
  -- due time of this push (see the top).
  local wake = false
  if n == 0 and was_empty then
    local known = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')[2]
    wake = true
    if known then
      known = tonumber(known)
      for j = 0, m - 1 do
        wake = now + tonumber(ARGV[start + 2 * j]) < known
        if wake then
          break
        end
      end
    end
  end
  for j = 0, m - 1 do
    local delay = tonumber(ARGV[start + 2 * j])
    local body = ARGV[start + 2 * j + 1]
    -- The sequence number keeps identical bodies distinct members.
    redis.call('ZADD', delayed, now + delay, (first + j + 1) .. '|' .. body)
  end
  if wake and here then
    redis.call('LPUSH', ready, WAKE)
  elseif wake then
    report = 1
  end
end
return {n + m, report}
