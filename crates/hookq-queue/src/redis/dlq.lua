-- dlq: one bounded step of a DLQ replay or purge (the driver calls it until
-- the walk is done; see `RedisQueue::dlq_walk`).
--
-- KEYS: 1 dead, 2 ready
-- ARGV: 1 'replay' | 'purge' | 'rotate'
--   replay, purge:
--       2 '1' to filter by app else '0', 3 the app id,
--       4 most entries to take (-1: no limit),
--       5 most entries to walk in this call,
--       6 entries of the walk not yet walked (-1: this call starts the walk)
--       7 the other conditions, all of which must hold: '' for none, or a
--         JSON object with any of `endpoint` (its id), `reason` (a substring,
--         lower case: matched against the reason in lower case), `before` /
--         `after` (bounds of failed_at_ms, inclusive) and `ids` (entry ids:
--         the hex SHA-1 of the entry's text as stored, lower case)
--   rotate:
--       2 'back' (right end to left end) | 'forward' (left end to right end),
--       5 how many entries to move
-- Returns {taken, walked, length}: entries replayed or purged, entries
-- examined, and the length of `dead` when this call began (for the first
-- call, the bound of the whole walk).
--
-- Each walked entry is popped from the left and either taken (replay: its
-- job is pushed to `ready` in the same step) or pushed back on the right, so
-- an entry is never both replayed and kept, and is never out of `dead`
-- between calls. Entries dead-lettered meanwhile are appended on the right,
-- behind the walk's bound, so they are never walked by it. An entry that is
-- not a JSON object with a string "job" cannot be replayed: it is kept (a
-- purge without any condition removes it). An entry with a string
-- "job_base64" (a job whose bytes are not UTF-8) replays those bytes.
local dead, ready = KEYS[1], KEYS[2]

-- Standard base64 (padding and anything outside the alphabet skipped) to bytes.
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local sextet
local function unbase64(text)
  if not sextet then
    sextet = {}
    for i = 1, 64 do
      sextet[string.byte(B64, i)] = i - 1
    end
  end
  local out, bits, n = {}, 0, 0
  for i = 1, #text do
    local v = sextet[string.byte(text, i)]
    if v then
      bits = bits * 64 + v
      n = n + 6
      if n >= 8 then
        n = n - 8
        local scale = 2 ^ n
        out[#out + 1] = string.char(math.floor(bits / scale))
        bits = bits % scale
      end
    end
  end
  return table.concat(out)
end
local mode = ARGV[1]
local len = redis.call('LLEN', dead)

if mode == 'rotate' then
  local from, to = 'RIGHT', 'LEFT'
  if ARGV[2] == 'forward' then
    from, to = 'LEFT', 'RIGHT'
  end
  local n = math.min(tonumber(ARGV[5]), len)
  for _ = 1, n do
    redis.call('LMOVE', dead, dead, from, to)
  end
  return {0, n, len}
end

local replay = mode == 'replay'
local by_app, app = ARGV[2] == '1', ARGV[3]
local limit = tonumber(ARGV[4])
local chunk = tonumber(ARGV[5])
local left = tonumber(ARGV[6])
if left < 0 then
  left = len
end
local cond = nil
if ARGV[7] and ARGV[7] ~= '' then
  cond = cjson.decode(ARGV[7])
end
local ids = nil
if cond and type(cond.ids) == 'table' then
  ids = {}
  for _, id in ipairs(cond.ids) do
    ids[id] = true
  end
end

-- Whether a decoded entry (its stored text `entry`) meets every condition.
local function matches(entry, decoded)
  if by_app and decoded.app_id ~= app then
    return false
  end
  if not cond then
    return true
  end
  if cond.endpoint and decoded.endpoint ~= cond.endpoint then
    return false
  end
  if cond.reason and not (type(decoded.reason) == 'string'
      and string.find(string.lower(decoded.reason), cond.reason, 1, true)) then
    return false
  end
  local at = decoded.failed_at_ms
  if cond.before and not (type(at) == 'number' and at <= cond.before) then
    return false
  end
  if cond.after and not (type(at) == 'number' and at >= cond.after) then
    return false
  end
  if ids and not ids[redis.sha1hex(entry)] then
    return false
  end
  return true
end

if not replay and not by_app and not cond then
  -- Every entry walked is taken: no decoding, no rotation.
  local n = math.min(left, len)
  if limit >= 0 and limit < n then
    n = limit
  end
  if n == len then
    -- The whole list is what is left of the walk: one O(1) step (UNLINK
    -- frees a long list in the background).
    redis.call('UNLINK', dead)
    return {n, n, len}
  end
  n = math.min(n, chunk)
  if n > 0 then
    redis.call('LTRIM', dead, n, -1)
  end
  return {n, n, len}
end

-- Never more than the list holds now: what this call pushes back is not walked again.
local walk = math.min(chunk, left, len)
local done, walked = 0, 0
while walked < walk and (limit < 0 or done < limit) do
  local entry = redis.call('LPOP', dead)
  walked = walked + 1
  local ok, decoded = pcall(cjson.decode, entry)
  local valid = ok and type(decoded) == 'table' and type(decoded.job) == 'string'
  -- (A purge without any condition took the branch above.)
  local take = valid and matches(entry, decoded)
  if take then
    done = done + 1
    if replay then
      if type(decoded.job_base64) == 'string' then
        redis.call('LPUSH', ready, unbase64(decoded.job_base64))
      else
        redis.call('LPUSH', ready, decoded.job)
      end
    end
  else
    redis.call('RPUSH', dead, entry)
  end
end
return {done, walked, len}
