-- One partition's lease for an ordered consumer group (cdc/consumers/leases.py).
-- KEYS[1] lease: "<consumer> <epoch>" with a TTL; KEYS[2] fence: the epoch counter (no TTL).
-- ARGV: op, consumer (acquire) or token (renew, release), lease ms.
--   acquire  when free, INCR the fence and SET NX PX the new token; return it (nil if taken)
--   renew    PEXPIRE while the lease still holds this token; 1, or 0 when it was lost
--   release  DEL while the lease still holds this token; 1, or 0
local op = ARGV[1]
if op == 'acquire' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return false
  end
  local token = ARGV[2] .. ' ' .. redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[3])
  return token
end
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
if op == 'renew' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return redis.call('DEL', KEYS[1])
