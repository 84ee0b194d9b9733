-- Republish entries whose member is new to a set (DLQ replay, time-range replay): one atomic step.
-- KEYS[1] stream, KEYS[2] set of members already republished on it (same hash slot)
-- ARGV[1] MAXLEN (~), 0 for uncapped
-- ARGV[2] MessagePack array of field names
-- ARGV[3] MessagePack array of entries: [member, value for each field...]
-- ARGV[4] TTL in seconds for the set, 0 to keep it
-- Returns the members added now (the others were already republished).
local names = cmsgpack.unpack(ARGV[2])
local entries = cmsgpack.unpack(ARGV[3])
local n = #names
local args, base = xadd_args(ARGV[1], names)
local added = {}
for _, e in ipairs(entries) do
  if redis.call('SADD', KEYS[2], e[1]) == 1 then
    for j = 1, n do
      args[base + 2 * j] = e[j + 1]
    end
    redis.call('XADD', KEYS[1], unpack(args))
    added[#added + 1] = e[1]
  end
end
if tonumber(ARGV[4]) > 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return added
