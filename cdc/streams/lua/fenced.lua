-- Read, claim or acknowledge entries of one partition, only while holding its lease.
-- KEYS[1] lease, KEYS[2] stream (same cluster slot); ARGV: token, op, group, consumer, args.
-- A token that is no longer the lease's (expired, taken over) gets a FENCED error: a paused
-- consumer that lost the partition can neither read, claim nor ack anything of it.
--   read  COUNT            XREADGROUP >; {entries, ''} or, when none, {{}, newest entry id}
--   claim CURSOR COUNT     XAUTOCLAIM min-idle 0 (every pending entry, oldest first, whoever
--                          holds it); {next cursor, entries, {id, deliveries, ...}, #deleted}
--   ack   ID...            XACK; the number acknowledged
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. KEYS[2] .. ' is no longer leased to ' .. ARGV[1])
end
local op, group, consumer = ARGV[2], ARGV[3], ARGV[4]
if op == 'ack' then
  return redis.call('XACK', KEYS[2], group, unpack(ARGV, 5))
end
if op == 'read' then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', ARGV[5],
                       'STREAMS', KEYS[2], '>')
  if r then
    return {r[1][2], ''}
  end
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  return {{}, top[1] and top[1][1] or '0-0'}
end
local c = redis.call('XAUTOCLAIM', KEYS[2], group, consumer, 0, ARGV[5], 'COUNT', ARGV[6])
local entries, counts = c[2], {}
if #entries > 0 then
  local rows = redis.call('XPENDING', KEYS[2], group, entries[1][1], entries[#entries][1],
                          #entries, consumer)
  for _, row in ipairs(rows) do
    counts[#counts + 1] = row[1]
    counts[#counts + 1] = row[4]
  end
end
return {c[1], entries, counts, #(c[3] or {})}
