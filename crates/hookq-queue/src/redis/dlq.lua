-- dlq: replay or purge dead-letter entries, oldest first, atomically.
--
-- KEYS: 1 dead, 2 ready
-- ARGV: 1 'replay' | 'purge', 2 '1' to filter by app else '0', 3 the app id,
--       4 most entries to touch (-1: all)
-- Returns how many entries were replayed or purged.
--
-- Each entry is popped from the left and either taken or pushed back on the
-- right; when the limit stops the walk early, the entries kept so far are
-- moved back to the left, so the order of what stays is unchanged. O(entries
-- walked), constant memory. An entry that is not a JSON object with a string
-- "job" cannot be replayed: it is kept (a purge without an app filter removes it).
local dead, ready = KEYS[1], KEYS[2]
local replay = ARGV[1] == 'replay'
local by_app, app = ARGV[2] == '1', ARGV[3]
local limit = tonumber(ARGV[4])

local total = redis.call('LLEN', dead)
if not replay and not by_app and (limit < 0 or limit >= total) then
  redis.call('DEL', dead)
  return total
end

local done, kept, walked = 0, 0, 0
while walked < total and (limit < 0 or done < limit) do
  local entry = redis.call('LPOP', dead)
  walked = walked + 1
  local ok, decoded = pcall(cjson.decode, entry)
  local valid = ok and type(decoded) == 'table' and type(decoded.job) == 'string'
  local take
  if by_app then
    take = valid and decoded.app_id == app
  elseif replay then
    take = valid
  else
    take = true
  end
  if take then
    done = done + 1
    if replay then
      redis.call('LPUSH', ready, decoded.job)
    end
  else
    redis.call('RPUSH', dead, entry)
    kept = kept + 1
  end
end
if walked < total then
  for _ = 1, kept do
    redis.call('LPUSH', dead, redis.call('RPOP', dead))
  end
end
return done
