-- Prelude of publish.lua and replay.lua (cdc/streams/luascripts.py puts it in front when loading).
-- Return the XADD argument list with MAXLEN (when > 0), '*' and the field names in place,
-- and `base`: the value of field j goes at args[base + 2 * j].
local function xadd_args(maxlen, names)
  local args = {'*'}
  if tonumber(maxlen) > 0 then
    args = {'MAXLEN', '~', maxlen, '*'}
  end
  local base = #args
  for j = 1, #names do
    args[base + 2 * j - 1] = names[j]
  end
  return args, base
end
