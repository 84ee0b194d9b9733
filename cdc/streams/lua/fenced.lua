-- Read, claim, acknowledge or fail entries of one partition, only while holding its lease.
-- KEYS[1] lease, KEYS[2] stream, KEYS[3] failures (HASH), KEYS[4] dedup set (ZSET): one
-- cluster slot (the stream's name is their hash tag). ARGV: token, op, group, consumer, args.
-- A token that is no longer the lease's (expired, taken over) gets a FENCED error: a paused
-- consumer that lost the partition can neither read, claim, ack nor fail anything of it.
--   read  COUNT            XREADGROUP >; {entries, ''} or, when none, {{}, newest entry id}
--   claim CURSOR COUNT     XAUTOCLAIM min-idle 0 (every pending entry, oldest first, whoever
--                          holds it); {next cursor, entries, {id, deliveries, ...}, #deleted,
--                          {id, handler failures, last error, ...}}
--   ack   N ID*N [T EVENT_ID...]  XACK the N ids, forget their failures, ZADD the event ids
--                          at score T to the dedup set; the number acknowledged
--   fail  ID ERROR TTL_MS  count one handler failure of ID (kept TTL_MS); the new count
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED ' .. KEYS[2] .. ' is no longer leased to ' .. ARGV[1])
end
local op, group, consumer = ARGV[2], ARGV[3], ARGV[4]
if op == 'ack' then
  local n = tonumber(ARGV[5])
  local done = redis.call('XACK', KEYS[2], group, unpack(ARGV, 6, 5 + n))
  if redis.call('EXISTS', KEYS[3]) == 1 then
    local fields = {}
    for i = 6, 5 + n do
      fields[#fields + 1] = ARGV[i]
      fields[#fields + 1] = ARGV[i] .. ':e'
    end
    redis.call('HDEL', KEYS[3], unpack(fields))
  end
  if #ARGV > 6 + n then
    local z = {}
    for i = 7 + n, #ARGV do
      z[#z + 1] = ARGV[6 + n]
      z[#z + 1] = ARGV[i]
    end
    redis.call('ZADD', KEYS[4], unpack(z))
  end
  return done
end
if op == 'fail' then
  local count = redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
  redis.call('HSET', KEYS[3], ARGV[5] .. ':e', ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
  return count
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
local entries, counts, failed = c[2], {}, {}
if #entries > 0 then
  local rows = redis.call('XPENDING', KEYS[2], group, entries[1][1], entries[#entries][1],
                          #entries, consumer)
  for _, row in ipairs(rows) do
    counts[#counts + 1] = row[1]
    counts[#counts + 1] = row[4]
  end
  if redis.call('EXISTS', KEYS[3]) == 1 then
    for _, e in ipairs(entries) do
      local n = redis.call('HGET', KEYS[3], e[1])
      if n then
        failed[#failed + 1] = e[1]
        failed[#failed + 1] = n
        failed[#failed + 1] = redis.call('HGET', KEYS[3], e[1] .. ':e') or ''
      end
    end
  end
end
return {c[1], entries, counts, #(c[3] or {}), failed}
