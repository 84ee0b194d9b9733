-- Add a consumer's dead letter to the DLQ stream at most once (cdc/consumers/handling.py).
-- KEYS[1] the DLQ stream, KEYS[2] the ZSET of dead letters added (same cluster slot).
-- ARGV: member ("<group> <stream> <entry id>"), keep ms, then the entry's field/value pairs.
-- The consumer acks the entry after this; when that ack fails (lease lost, Redis gone) the
-- entry is dead-lettered again later, and this answers false instead of adding it twice.
-- Members older than keep ms are forgotten. Returns the new DLQ entry id, or false.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZADD', KEYS[2], 'NX', now, ARGV[1]) == 0 then
  return false
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
