-- One flap-suppression step on a pending-vacate marker
-- (crates/hookq-queue/src/limits.rs, flap_step, holds the same rules and
-- their reasons). Values: h|<ms>|<token> held, s|<ms>|<token> due and sent,
-- c|<ms> cancelled by an occupy, o|<ms> an occupy sent.
-- KEYS[1] the marker
-- ARGV[1] 'vacate' | 'occupy' | 'due', ARGV[2] token, ARGV[3] enqueued_at_ms,
-- ARGV[4] ttl ms. Returns 'hold', 'send' or 'drop'.
local cur = redis.call('GET', KEYS[1]) or ''
local kind, at, tok = '', 0, nil
if cur ~= '' then
  kind = string.sub(cur, 1, 1)
  local rest = string.sub(cur, 3)
  local bar = string.find(rest, '|', 1, true)
  if bar then
    at = tonumber(string.sub(rest, 1, bar - 1)) or 0
    tok = string.sub(rest, bar + 1)
  else
    at = tonumber(rest) or 0
  end
end
local op, token, enq, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local function set(v)
  redis.call('SET', KEYS[1], v, 'PX', ttl)
end
if op == 'vacate' then
  if (kind == 'h' or kind == 's') and tok == token then
    if kind == 'h' then return 'hold' end
    return 'drop'
  end
  if (kind == 'o' or kind == 'c') and at > enq then return 'drop' end
  set('h|' .. ARGV[3] .. '|' .. token)
  return 'hold'
elseif op == 'occupy' then
  if kind == 'h' then
    set('c|' .. ARGV[3])
    return 'drop'
  end
  if kind == 'o' and at > enq then enq = at end
  set('o|' .. string.format('%d', enq))
  return 'send'
else
  if kind == 'h' and tok == token then
    set('s|' .. string.format('%d', at) .. '|' .. token)
    return 'send'
  end
  if kind == 's' and tok == token then return 'send' end
  if kind == '' then return 'send' end
  return 'drop'
end
