-- Heartbeat of an ordered consumer in its group's member set; return the live members.
-- KEYS[1] members: ZSET consumer -> when it expires (Redis time, ms).
-- ARGV: join|leave, consumer, ttl ms. The set itself expires when no member beats for 10 ttl.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'join' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
else
  redis.call('ZREM', KEYS[1], ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[3]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
