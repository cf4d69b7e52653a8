--[[ partition_state: shared helpers for the scripts that change a partition's state.
  Included (inlined by engine/scripts.py) by apply_batch.lua, advance_watermark.lua and read_profile.lua,
  before user_state.lua.
  Times are integer microseconds since the epoch, carried in Lua doubles (exact below 2^53);
  fmt() prints them without an exponent.

  The partition's clock (the quorum-th latest of its users' latest click times, state field `top`:
  read_watermark / note_clock / save_clock), the caps shared by the state helpers, closing minutes.
  A user's state: user_state.lua, included after this file.
]]
local rcall = redis.call
local US_PER_MIN = 60000000
local NEG_INF = -9007199254740992
local RECENT_IDS = 16          -- transaction id fingerprints kept in the profile (profile.lua)
local END_OF_TIME = 9007199254740992   -- 2^53: the watermark of a flushed partition (engine/control.py)
local MAX_SESSIONS = 64
local MAX_TYPES = 32
local MAX_VALUES = 32
local MAX_MINUTES = 128
local MAX_IDS = 4096
local OTHER = '(other)'
local HSET_CHUNK = 200          -- field/value pairs per HSET (unpack() has a limit)

local function fmt(x)
  return string.format('%.0f', x)
end

-- µs -> ms since the epoch, for JSON (cjson keeps 14 digits of a number: exact for ms, not µs).
-- Times are never formatted as dates here: Python does it (engine/export.py).
local function ms(us)
  return math.floor(us / 1000)
end

-- keys: the script's KEYS by name (K, engine/contract.py)
local function new_ctx(keys, gap, ttl, maxlen)
  return {
    prefix = keys.prefix, state = keys.state, open = keys.open, mopen = keys.mopen,
    sessions = keys.sessions, alerts = keys.alerts, late = keys.late, minutes = keys.minutes,
    gap = gap, ttl = ttl, maxlen = maxlen, users = {}, tombs = {}, closed = 0, finalized = 0, capped = 0,
    on_close = nil,   -- function(ctx, uid, session) called for every session closed
  }
end

-- HSET key with the pairs of args, chunked: a command's arguments come from unpack(), which has a
-- limit, and a script must not fail after its first write.
local function hset_all(key, args)
  for j = 1, #args, 2 * HSET_CHUNK do
    rcall('HSET', key, unpack(args, j, math.min(j + 2 * HSET_CHUNK - 1, #args)))
  end
end

local function size(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- t[k] += by, with at most cap distinct keys: a key beyond them counts under OTHER.
local function count_capped(ctx, t, k, by, cap)
  if t[k] == nil and size(t) >= cap then
    k = OTHER
    ctx.capped = ctx.capped + 1
  end
  t[k] = (t[k] or 0) + by
end

-- t[k] = the earliest time, with at most cap distinct keys (a key beyond them is not remembered).
local function first_capped(ctx, t, k, ts, cap)
  local cur = t[k]
  if cur == nil then
    if size(t) >= cap then
      ctx.capped = ctx.capped + 1
      return
    end
    t[k] = ts
  elseif ts < cur then
    t[k] = ts
  end
end

-- Emit every minute that no event which is not late can reach any more (at most limit).
local function finalize_minutes(ctx, wm, limit)
  local last = math.floor((wm - ctx.gap) / US_PER_MIN) - 1
  local done = rcall('ZRANGEBYSCORE', ctx.mopen, '-inf', fmt(last), 'LIMIT', 0, limit)
  for _, m in ipairs(done) do
    local ckey, hkey = ctx.prefix .. KEY.count .. m, ctx.prefix .. KEY.hll .. m
    rcall('XADD', ctx.minutes, 'MAXLEN', '~', ctx.maxlen, '*', 'minute', fmt(tonumber(m) * US_PER_MIN),
      'events', rcall('GET', ckey) or 0, 'unique_users', rcall('PFCOUNT', hkey))
    rcall('DEL', ckey, hkey)
    rcall('ZREM', ctx.mopen, m)
  end
  ctx.finalized = ctx.finalized + #done
  return #done == limit
end

-- The partition's watermark, its event-time clock and the tombstone horizon.  The clock is not the
-- latest click time but the quorum-th latest of the users' latest click times (ctx.top, see
-- note_clock): one client, whatever its clock says, cannot move it.
local function read_watermark(ctx)
  local v = rcall('HMGET', ctx.state, 'wm', 'max', 'tombs_until', 'top')
  local top = {}
  if v[4] then
    local ok, doc = pcall(cjson.decode, v[4])
    if ok and type(doc) == 'table' then
      for _, e in ipairs(doc) do
        if type(e) == 'table' and type(e[1]) == 'string' and tonumber(e[2]) then top[#top + 1] = {e[1], tonumber(e[2])} end
      end
    end
  end
  ctx.top = top
  return tonumber(v[1]) or NEG_INF, tonumber(v[2]) or NEG_INF, tonumber(v[3]) or NEG_INF
end

-- A click of uid at ts: ctx.top keeps the quorum users with the latest click times (descending,
-- exact: a user's latest time only grows, so one that left the top can only come back with a time
-- above the quorum-th).  Returns the quorum-th latest time, or nil while fewer users have clicked.
local function note_clock(ctx, uid, ts)
  local top, k = ctx.top, ctx.quorum
  local n = #top
  if n >= k and ts <= top[k][2] then return top[k][2] end
  local at
  for i = 1, n do
    if top[i][1] == uid then at = i; break end
  end
  if at then
    if ts <= top[at][2] then return n >= k and top[k][2] or nil end
    top[at][2] = ts
  else
    at = n + 1
    top[at] = {uid, ts}
  end
  while at > 1 and top[at][2] > top[at - 1][2] do
    top[at], top[at - 1] = top[at - 1], top[at]
    at = at - 1
  end
  while #top > k do top[#top] = nil end
  ctx.top_changed = true
  return #top >= k and top[k][2] or nil
end

local function save_clock(ctx)
  if not ctx.top_changed then return end
  local out = {}
  for i, e in ipairs(ctx.top) do out[i] = {e[1], fmt(e[2])} end   -- cjson keeps 14 digits of a number
  rcall('HSET', ctx.state, 'top', cjson.encode(out))
end

-- Was the user erased (GDPR)? Looked up only while the partition may hold a live tombstone.
local function erased(ctx, uid)
  local hit = ctx.tombs[uid]
  if hit == nil then
    hit = rcall('EXISTS', ctx.prefix .. KEY.tomb .. uid) == 1
    ctx.tombs[uid] = hit
  end
  return hit
end
