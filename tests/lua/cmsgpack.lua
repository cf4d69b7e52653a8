--[[ cmsgpack for fakeredis: Redis's Lua has the lua-cmsgpack C library built in, fakeredis's Lua
  5.1 (lupa) does not.  tests/conftest.py puts this folder on LUA_PATH and asks fakeredis to
  require('cmsgpack').  The encoding rules of Redis's lua_cmsgpack.c (0.4.0), byte for byte
  (tests/test_cmsgpack.py runs the same cases through a real redis-server): a number that an int64
  holds exactly as the smallest MessagePack int; any other number as a float 32 when a float holds
  it exactly (1.5, inf), else a double (NaN keeps its sign, read from tostring as C prints it); a
  string as fixstr / str 8 / 16 / 32; a table whose keys are exactly 1..n as an array (the empty
  table too), any other table as a map in pairs() order (the same Lua 5.1 table layout as Redis's
  Lua, so the same order); a table nested 16 deep, a function or userdata as nil.  unpack returns
  every object of its input.  Plain Lua 5.1: bytes by arithmetic (no string.pack, no bit library).
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

-- v > 0 (not NaN): does a C float hold it exactly (so that lua_cmsgpack.c writes a float 32)?
local function is_float(v)
  if v == math.huge then return true end
  local m, e = math.frexp(v)                 -- v = m * 2^e, 0.5 <= m < 1
  if e > 128 then return false end           -- above FLT_MAX
  if e >= -125 then return (m * 2 ^ 24) % 1 == 0 end   -- a normal float: 24 significant bits
  return (v * 2 ^ 149) % 1 == 0              -- a subnormal float: a multiple of 2^-149
end

local function pack_float(v, sign)         -- v > 0 and is_float(v)
  if v == math.huge then return '\202' .. char(sign + 127, 128, 0, 0) end
  local m, e = math.frexp(v)
  local exp, frac = e + 126, (m * 2 - 1) * 2 ^ 23
  if exp < 1 then exp, frac = 0, v * 2 ^ 149 end
  return '\202' .. char(sign + floor(exp / 2), (exp % 2) * 128 + floor(frac / 65536)) .. be(frac % 65536, 2)
end

local function pack_number(v)              -- not an int64 (lua_cmsgpack.c mp_encode_double)
  if v ~= v then                             -- NaN: C prints its sign ("-nan")
    return '\203' .. char(tostring(v):sub(1, 1) == '-' and 255 or 127, 248, 0, 0, 0, 0, 0, 0)
  end
  local sign = 0
  if v < 0 then sign, v = 128, -v end
  if is_float(v) then return pack_float(v, sign) end
  local m, e = math.frexp(v)                 -- v = m * 2^e, 0.5 <= m < 1
  local exp, frac = e + 1022, (m * 2 - 1) * 2 ^ 52
  if exp < 1 then exp, frac = 0, v * 2 ^ 537 * 2 ^ 537 end    -- a subnormal double: v / 2^-1074
  return '\203' .. char(sign + floor(exp / 16), (exp % 16) * 16 + floor(frac / 2 ^ 48)) ..
    be(floor(frac / TWO32) % 65536, 2) .. be(frac % TWO32, 4)
end

local pack_one

local function header(count, small, op16, op32)
  if count < 16 then return char(small + count) end
  if count < 65536 then return op16 .. be(count, 2) end
  return op32 .. be(count, 4)
end

local MAX_NESTING = 16                     -- LUACMSGPACK_MAX_NESTING: deeper tables are packed as nil

local function pack_table(t, out, level)
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
    for i = 1, count do pack_one(t[i], out, level + 1) end
  else
    out[#out + 1] = header(count, 0x80, '\222', '\223')
    for k, v in pairs(t) do
      pack_one(k, out, level + 1)
      pack_one(v, out, level + 1)
    end
  end
end

pack_one = function(v, out, level)
  local kind = type(v)
  if kind == 'table' and level >= MAX_NESTING then kind = 'nil' end
  if kind == 'nil' then
    out[#out + 1] = '\192'
  elseif kind == 'boolean' then
    out[#out + 1] = v and '\195' or '\194'
  elseif kind == 'number' then
    if v == floor(v) and v >= -2 ^ 63 and v < 2 ^ 63 then out[#out + 1] = pack_int(v) else out[#out + 1] = pack_number(v) end
  elseif kind == 'string' then
    local n = #v
    if n < 32 then out[#out + 1] = char(0xa0 + n)
    elseif n < 256 then out[#out + 1] = '\217' .. be(n, 1)
    elseif n < 65536 then out[#out + 1] = '\218' .. be(n, 2)
    else out[#out + 1] = '\219' .. be(n, 4) end
    out[#out + 1] = v
  elseif kind == 'table' then
    pack_table(v, out, level)
  else                                     -- a function, userdata or thread: nil, as lua_cmsgpack.c
    out[#out + 1] = '\192'
  end
end

local function uint(s, pos, width)
  if pos + width - 1 > #s then error('cmsgpack: truncated input') end
  if width == 8 then                         -- two halves, so that the double is rounded once, as C does
    local hi, lo = uint(s, pos, 4), uint(s, pos + 4, 4)
    return hi * TWO32 + lo, pos + 8
  end
  local n = 0
  for i = pos, pos + width - 1 do n = n * 256 + s:byte(i) end
  return n, pos + width
end

local function int(s, pos, width)
  if width == 8 then
    local hi, lo = uint(s, pos, 4), uint(s, pos + 4, 4)
    if hi >= 2 ^ 31 then hi = hi - TWO32 end
    return hi * TWO32 + lo, pos + 8
  end
  local n, after = uint(s, pos, width)
  if n >= 2 ^ (8 * width - 1) then n = n - 2 ^ (8 * width) end
  return n, after
end

-- A NaN of the given sign (Redis's unpack keeps the bits; Lua can only make 0/0 and its negation).
local function nan(sign)
  local x = 0 / 0
  if (tostring(x):sub(1, 1) == '-') ~= (sign < 0) then x = -x end
  return x
end

local function double(s, pos)
  local hi, lo
  hi, pos = uint(s, pos, 4)
  lo, pos = uint(s, pos, 4)
  local sign = hi >= 2 ^ 31 and -1 or 1
  local exp = floor(hi / 2 ^ 20) % 2048
  local frac = (hi % 2 ^ 20) * TWO32 + lo
  if exp == 0 then return sign * math.ldexp(frac, -1074), pos end
  if exp == 2047 then return (frac == 0 and sign * math.huge or nan(sign)), pos end
  return sign * math.ldexp(frac + 2 ^ 52, exp - 1075), pos
end

local function float(s, pos)
  local n
  n, pos = uint(s, pos, 4)
  local sign = n >= 2 ^ 31 and -1 or 1
  local exp = floor(n / 2 ^ 23) % 256
  local frac = n % 2 ^ 23
  if exp == 0 then return sign * math.ldexp(frac, -149), pos end
  if exp == 255 then return (frac == 0 and sign * math.huge or nan(sign)), pos end
  return sign * math.ldexp(frac + 2 ^ 23, exp - 150), pos
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
  if b == 0xca then return float(s, pos) end
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
    for i = 1, select('#', ...) do pack_one((select(i, ...)), out, 0) end
    return table.concat(out)
  end,
  unpack = unpack_all,
}
