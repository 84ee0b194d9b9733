-- Change a query job's fields only while it exists, so an update never resurrects an expired
-- job without a TTL; HSET keeps the key's TTL. KEYS[1] the job's hash; ARGV field/value
-- pairs. Returns the job's fields, or nil.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], unpack(ARGV))
return redis.call('HGETALL', KEYS[1])
