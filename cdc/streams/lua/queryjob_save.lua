-- Replace a whole query job and start its TTL, in one step.
-- KEYS[1] the job's hash; ARGV[1] the TTL in ms, then field/value pairs.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
