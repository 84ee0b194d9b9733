-- Add entries above the stream's high-water mark, then advance the mark: one atomic step.
-- KEYS[1] stream, KEYS[2] high-water mark key
-- ARGV[1] MAXLEN (~), 0 for uncapped
-- ARGV[2] MessagePack array of field names
-- ARGV[3] MessagePack array of entries: [dedup key, value for each field...]; the dedup key is
--         "%014x:%016x:%08x" of (slot epoch, commit LSN, position in the transaction), so
--         string order is commit order.
-- ARGV[4] the last dedup key of the previous batch this session sent to this stream ('' for
--         the first): unless the mark is at or above it, that batch (or an earlier one) did
--         not land, and this batch must not move the mark past its events. Refused whole.
-- ARGV[5] how many fields every entry has (default: all); an entry may carry the rest too
--         (the trace context of a traced event), or none of them.
-- Returns the number of entries added (the others were already published).
local hwm = redis.call('GET', KEYS[2]) or ''
if hwm < ARGV[4] then
  return redis.error_reply('CDCGAP mark ' .. KEYS[2] .. ' is at "' .. hwm
    .. '", below the previous batch\'s last key "' .. ARGV[4] .. '"')
end
local names = cmsgpack.unpack(ARGV[2])
local entries = cmsgpack.unpack(ARGV[3])
local required = tonumber(ARGV[5]) or #names
local args, base = xadd_args(ARGV[1], names)
local last = hwm
local added = 0
for _, e in ipairs(entries) do
  local key = e[1]
  if key > last then
    local n = #e - 1
    if n < required then
      n = #names  -- the missing values make XADD refuse the entry, below
    end
    for j = 1, n do
      args[base + 2 * j] = e[j + 1]
    end
    local r = redis.pcall('XADD', KEYS[1], unpack(args, 1, base + 2 * n))
    if type(r) == 'table' and r.err then
      -- Only the first write of a script can be refused for OOM; keep the mark exactly at
      -- what landed either way, so a replay adds the rest and nothing twice.
      if last ~= hwm then
        redis.call('SET', KEYS[2], last)
      end
      return redis.error_reply(r.err)
    end
    last = key
    added = added + 1
  end
end
if last ~= hwm then
  redis.call('SET', KEYS[2], last)
end
return added
