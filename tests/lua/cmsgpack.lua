--[[ cmsgpack for fakeredis: Redis's Lua has the lua-cmsgpack C library built in, fakeredis's Lua
  5.1 (lupa) does not.  tests/conftest.py puts this folder on LUA_PATH and asks fakeredis to
  require('cmsgpack').  Same encoding rules as lua-cmsgpack for what the engine stores: integral
  numbers (below 2^53) as the smallest MessagePack int, others as a double; a table whose keys are
  exactly 1..n is an array (the empty table too), any other table a map.  unpack returns every
  object of its input.  Plain Lua 5.1: bytes by arithmetic (no string.pack, no bit library).
]]
local floor, char = math.floor, string.char
local TWO32 = 4294967296

local function be(n, width)            -- n >= 0, below 2^(8 width): big-endian bytes
  local bytes = {}
  for i = width, 1, -1 do
    bytes[i] = n % 256
    n = floor(n / 256)
  end
  return char(unpack(bytes))
end

local function pack_int(n)
  if n >= 0 then
    if n < 128 then return char(n) end
    if n < 256 then return '\204' .. be(n, 1) end
    if n < 65536 then return '\205' .. be(n, 2) end
    if n < TWO32 then return '\206' .. be(n, 4) end
    return '\207' .. be(floor(n / TWO32), 4) .. be(n % TWO32, 4)
  end
  if n >= -32 then return char(256 + n) end
  if n >= -128 then return '\208' .. be(256 + n, 1) end
  if n >= -32768 then return '\209' .. be(65536 + n, 2) end
  if n >= -2147483648 then return '\210' .. be(TWO32 + n, 4) end
  local hi = floor(n / TWO32)
  return '\211' .. be(hi + TWO32, 4) .. be(n - hi * TWO32, 4)
end

local function pack_double(v)
  if v ~= v then return '\203\127\248\0\0\0\0\0\0' end
  local sign = 0
  if v < 0 or (v == 0 and 1 / v < 0) then sign, v = 128, -v end
  if v == math.huge then return '\203' .. char(sign + 127, 240, 0, 0, 0, 0, 0, 0) end
  if v == 0 then return '\203' .. char(sign, 0, 0, 0, 0, 0, 0, 0) end
  local m, e = math.frexp(v)                 -- v = m * 2^e, 0.5 <= m < 1
  local frac = (m * 2 - 1) * 2 ^ 52
  local exp = e + 1022
  return '\203' .. char(sign + floor(exp / 16), (exp % 16) * 16 + floor(frac / 2 ^ 48)) ..
    be(floor(frac / TWO32) % 65536, 2) .. be(frac % TWO32, 4)
end

local pack_one

local function header(count, small, op16, op32)
  if count < 16 then return char(small + count) end
  if count < 65536 then return op16 .. be(count, 2) end
  return op32 .. be(count, 4)
end

local function pack_table(t, out)
  local count, max = 0, 0
  for k in pairs(t) do
    count = count + 1
    if type(k) == 'number' and k >= 1 and k == floor(k) then
      if k > max then max = k end
    else
      max = -1
    end
  end
  if max == count then
    out[#out + 1] = header(count, 0x90, '\220', '\221')
    for i = 1, count do pack_one(t[i], out) end
  else
    out[#out + 1] = header(count, 0x80, '\222', '\223')
    for k, v in pairs(t) do
      pack_one(k, out)
      pack_one(v, out)
    end
  end
end

pack_one = function(v, out)
  local kind = type(v)
  if kind == 'nil' then
    out[#out + 1] = '\192'
  elseif kind == 'boolean' then
    out[#out + 1] = v and '\195' or '\194'
  elseif kind == 'number' then
    if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then out[#out + 1] = pack_int(v) else out[#out + 1] = pack_double(v) end
  elseif kind == 'string' then
    local n = #v
    if n < 32 then out[#out + 1] = char(0xa0 + n)
    elseif n < 256 then out[#out + 1] = '\217' .. be(n, 1)
    elseif n < 65536 then out[#out + 1] = '\218' .. be(n, 2)
    else out[#out + 1] = '\219' .. be(n, 4) end
    out[#out + 1] = v
  elseif kind == 'table' then
    pack_table(v, out)
  else
    error('cmsgpack: cannot pack a ' .. kind)
  end
end

local function uint(s, pos, width)
  if pos + width - 1 > #s then error('cmsgpack: truncated input') end
  local n = 0
  for i = pos, pos + width - 1 do n = n * 256 + s:byte(i) end
  return n, pos + width
end

local function int(s, pos, width)
  local n, after = uint(s, pos, width)
  if n >= 2 ^ (8 * width - 1) then n = n - 2 ^ (8 * width) end
  return n, after
end

local function double(s, pos)
  local hi, lo
  hi, pos = uint(s, pos, 4)
  lo, pos = uint(s, pos, 4)
  local sign = hi >= 2 ^ 31 and -1 or 1
  local exp = floor(hi / 2 ^ 20) % 2048
  local frac = (hi % 2 ^ 20) * TWO32 + lo
  if exp == 0 then return sign * math.ldexp(frac, -1074), pos end
  if exp == 2047 then return (frac == 0 and sign * math.huge or 0 / 0), pos end
  return sign * math.ldexp(frac + 2 ^ 52, exp - 1075), pos
end

local unpack_one

local function list(s, pos, n, is_map)
  local t = {}
  for i = 1, n do
    if is_map then
      local k, v
      k, pos = unpack_one(s, pos)
      v, pos = unpack_one(s, pos)
      t[k] = v
    else
      t[i], pos = unpack_one(s, pos)
    end
  end
  return t, pos
end

local function bytes(s, pos, n)
  if pos + n - 1 > #s then error('cmsgpack: truncated input') end
  return s:sub(pos, pos + n - 1), pos + n
end

unpack_one = function(s, pos)
  local b = s:byte(pos)
  if not b then error('cmsgpack: truncated input') end
  pos = pos + 1
  if b < 0x80 then return b, pos end
  if b >= 0xe0 then return b - 256, pos end
  if b < 0x90 then return list(s, pos, b - 0x80, true) end
  if b < 0xa0 then return list(s, pos, b - 0x90, false) end
  if b < 0xc0 then return bytes(s, pos, b - 0xa0) end
  if b == 0xc0 then return nil, pos end
  if b == 0xc2 then return false, pos end
  if b == 0xc3 then return true, pos end
  local n
  if b == 0xc4 or b == 0xd9 then n, pos = uint(s, pos, 1) return bytes(s, pos, n) end
  if b == 0xc5 or b == 0xda then n, pos = uint(s, pos, 2) return bytes(s, pos, n) end
  if b == 0xc6 or b == 0xdb then n, pos = uint(s, pos, 4) return bytes(s, pos, n) end
  if b == 0xcb then return double(s, pos) end
  if b >= 0xcc and b <= 0xcf then return uint(s, pos, 2 ^ (b - 0xcc)) end
  if b >= 0xd0 and b <= 0xd3 then return int(s, pos, 2 ^ (b - 0xd0)) end
  if b == 0xdc or b == 0xde then n, pos = uint(s, pos, 2) return list(s, pos, n, b == 0xde) end
  if b == 0xdd or b == 0xdf then n, pos = uint(s, pos, 4) return list(s, pos, n, b == 0xdf) end
  error(string.format('cmsgpack: unsupported type byte 0x%02x', b))
end

local function unpack_all(s)
  local out, n, pos = {}, 0, 1
  while pos <= #s do
    n = n + 1
    out[n], pos = unpack_one(s, pos)
  end
  return unpack(out, 1, n)
end

return {
  pack = function(...)
    local out = {}
    for i = 1, select('#', ...) do pack_one((select(i, ...)), out) end
    return table.concat(out)
  end,
  unpack = unpack_all,
}
