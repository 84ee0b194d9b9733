-- Last-writer-wins write of one ontology node or edge and its index sets, in one step.
-- KEYS[1]     the node's (or edge's) hash
-- KEYS[2..]   index sets; each gets one member, listed after the field pairs
-- ARGV[1]     the event's order `v` (integer microseconds)
-- ARGV[2]     n, the number of field/value pairs that follow
-- ARGV[3..]   n field/value pairs, then one member per index set
-- The hash is written only when `v` is above the `v` it holds, so a redelivered or late
-- event changes nothing; set members are added either way (adding twice is a no-op).
-- Returns 1 when the hash was written, 0 when the event was stale.
local v = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[2 + 2 * n + i - 1])
end
local have = tonumber(redis.call('HGET', KEYS[1], 'v'))
if have ~= nil and have >= v then
  return 0
end
local args = {'v', ARGV[1]}
for i = 3, 2 + 2 * n do
  args[#args + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(args))
return 1
