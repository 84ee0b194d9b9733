-- Trim a stream only below the oldest entry some consumer group still needs: one atomic step.
-- KEYS[1] stream
-- Per group, the first entry it still needs is its oldest pending entry (delivered, not
-- acked) or, when nothing is pending, the entry after its last-delivered-id. The stream is
-- trimmed (XTRIM MINID, exact) below the smallest of these over all groups.
-- Returns {entries removed, MINID used ('' = none), length after, group holding the MINID}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, '', 0, ''}
end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
local minid, holder = nil, ''
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  local need
  if tonumber(info['pending']) > 0 then
    need = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local ms, seq = parse(info['last-delivered-id'])
    need = string.format('%.0f-%.0f', ms, seq + 1)
  end
  if minid == nil or less(need, minid) then
    minid, holder = need, info['name']
  end
end
if minid == nil then
  return {0, '', redis.call('XLEN', KEYS[1]), ''}
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', '=', minid)
return {removed, minid, redis.call('XLEN', KEYS[1]), holder}
