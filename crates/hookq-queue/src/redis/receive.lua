-- receive: promote due delayed jobs, reclaim expired leases, then claim up to
-- ARGV[1] jobs under a lease of ARGV[2] ms. Atomic, so two workers never
-- claim one job, and a delayed job or an expired hold moves exactly once.
--
-- KEYS: 1 ready, 2 delayed, 3 held, 4 leases, 5 seq
-- ARGV: 1 max jobs to claim, 2 lease ms, 3 most delayed jobs and most expired
--       leases moved per call (bounds the script's run time)
-- Returns {next, first, stamp, bodies, recounts, woke} where next is the
-- number of ms until the earliest delayed job or lease deadline, -1 when
-- none; the i-th body (from 1) was claimed under the token
-- "<first + i>-<stamp>"; recounts lists {i, receive_count, ...} for the jobs
-- received before (every other one is on its first receive); and woke is 1
-- when a wake marker was dropped (a push to another shard may have brought a
-- job: see RedisQueue::sweep), else 0. One reply element per job, not three
-- with the token and count: the client's RESP parser costs more per element
-- than per byte.
local ready, delayed, held, leases, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
-- The wake marker of push.lua: it only ends receivers' waits, and is dropped.
local WAKE = '\0wake'

local max, lease, batch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The earliest score of a sorted set, nil when it is empty.
local function earliest(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return first[2] and tonumber(first[2])
end

-- Due delayed jobs join the back of the queue as bare bodies ("<seq>|<body>").
local next_delayed = earliest(delayed)
if next_delayed and next_delayed <= now then
  local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
  for _, member in ipairs(due) do
    local bar = string.find(member, '|', 1, true)
    if bar then
      redis.call('LPUSH', ready, string.sub(member, bar + 1))
    else
      redis.call('LPUSH', ready, member)
    end
    redis.call('ZREM', delayed, member)
  end
  next_delayed = earliest(delayed)
end

-- Expired holds go to the front (they have waited longest), wrapped as
-- "\0<receive count>|<body>" so that the count survives the reclaim.
local next_lease = earliest(leases)
if next_lease and next_lease <= now then
  local expired = redis.call('ZRANGE', leases, '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
  for _, token in ipairs(expired) do
    local value = redis.call('HGET', held, token)
    if value then
      redis.call('RPUSH', ready, '\0' .. value)
      redis.call('HDEL', held, token)
    end
    redis.call('ZREM', leases, token)
  end
  next_lease = earliest(leases)
end

-- Claim from the front. A bare body (an external LPUSH, a push, a promoted
-- delay, a replay) has been received 0 times so far. Numbers are turned into
-- text once per call where they can be: Redis formats every number argument
-- with "%.17g", which costs more than the rest of a claim.
local bodies, recounts = {}, {}
local first, stamp = 0, 0
local woke = 0
local items = redis.call('RPOP', ready, max)
if items then
  -- At most one marker; comparing interned Lua strings is cheap.
  for i = #items, 1, -1 do
    if items[i] == WAKE then
      table.remove(items, i)
      woke = 1
    end
  end
end
if items and #items > 0 then
  first = redis.call('INCRBY', seq, #items) - #items
  stamp = now
  local deadline = string.format('%d', now + lease)
  -- The server time in the token keeps tokens unique even when a Redis
  -- without persistence restarts and the counter starts again.
  local suffix = string.format('-%d', now)
  -- One HSET and one ZADD for the whole claim, not one per job.
  local holds, deadlines = {}, {}
  for i, item in ipairs(items) do
    local count, body = '1', item
    if string.byte(item, 1) == 0 then
      local bar = string.find(item, '|', 2, true)
      local n = bar and tonumber(string.sub(item, 2, bar - 1))
      if n then
        count, body = string.format('%d', n + 1), string.sub(item, bar + 1)
        recounts[#recounts + 1] = i
        recounts[#recounts + 1] = n + 1
      end
    end
    local token = string.format('%d', first + i) .. suffix
    local k = 2 * i
    holds[k - 1] = token
    holds[k] = count .. '|' .. body
    deadlines[k - 1] = deadline
    deadlines[k] = token
    bodies[i] = body
  end
  redis.call('HSET', held, unpack(holds))
  redis.call('ZADD', leases, unpack(deadlines))
end

-- When the next job becomes ready by itself, so that a receiver that claimed
-- nothing knows how long it may block (the leases just granted come later).
local next_at = next_delayed or -1
if next_lease and (next_at < 0 or next_lease < next_at) then
  next_at = next_lease
end
if next_at >= 0 then
  next_at = math.max(0, next_at - now)
end
return {next_at, first, stamp, bodies, recounts, woke}
