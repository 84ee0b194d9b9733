-- Add entries above the stream's high-water mark, then advance the mark: one atomic step.
-- KEYS[1] stream, KEYS[2] high-water mark key
-- ARGV[1] MAXLEN (~) or 0 for uncapped, ARGV[2] field/value pairs per entry (n)
-- then per entry: its dedup key ("%016x:%08x" of commit LSN and position), 2n strings.
-- Returns the number of entries added (the rest were already published).
local hwm = redis.call('GET', KEYS[2]) or ''
local pairs_n = tonumber(ARGV[2]) * 2
local args = {KEYS[1]}
if tonumber(ARGV[1]) > 0 then
  args = {KEYS[1], 'MAXLEN', '~', ARGV[1]}
end
args[#args + 1] = '*'
local base = #args
local last = hwm
local added = 0
local i = 3
while i <= #ARGV do
  local key = ARGV[i]
  if key > last then
    for j = 1, pairs_n do
      args[base + j] = ARGV[i + j]
    end
    redis.call('XADD', unpack(args))
    last = key
    added = added + 1
  end
  i = i + 1 + pairs_n
end
if last ~= hwm then
  redis.call('SET', KEYS[2], last)
end
return added
