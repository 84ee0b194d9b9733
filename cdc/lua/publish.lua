-- Add entries above the stream's high-water mark, then advance the mark: one atomic step.
-- KEYS[1] stream, KEYS[2] high-water mark key
-- ARGV[1] MAXLEN (~), 0 for uncapped
-- ARGV[2] MessagePack array of field names
-- ARGV[3] MessagePack array of entries: [dedup key, value for each field...]; the dedup key is
--         "%014x:%016x:%08x" of (slot epoch, commit LSN, position in the transaction), so
--         string order is commit order.
-- Returns the number of entries added (the others were already published).
local hwm = redis.call('GET', KEYS[2]) or ''
local names = cmsgpack.unpack(ARGV[2])
local entries = cmsgpack.unpack(ARGV[3])
local n = #names
local args, base = xadd_args(ARGV[1], names)
local last = hwm
local added = 0
for _, e in ipairs(entries) do
  local key = e[1]
  if key > last then
    for j = 1, n do
      args[base + 2 * j] = e[j + 1]
    end
    redis.call('XADD', KEYS[1], unpack(args))
    last = key
    added = added + 1
  end
end
if last ~= hwm then
  redis.call('SET', KEYS[2], last)
end
return added
