-- Raise a stream's high-water mark to ARGV[1] unless it is higher already; return the old one.
-- KEYS[1] the mark (keys.hwm). Used once per format-1 mark, when the relay migrates it.
local cur = redis.call('GET', KEYS[1]) or ''
if cur < ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
