--[[ partition_state: shared helpers for the scripts that change a partition's state.
  Included (inlined by engine/scripts.py) by apply_batch.lua and advance_watermark.lua.
  Times are integer microseconds since the epoch, carried in Lua doubles (exact below 2^53);
  fmt() prints them without an exponent.

  Per-user state, HASH <prefix>user:<user_id>:
    sessions  open sessions "start last n types|start last n types", types "tok:count,tok:count"
    minutes   per-user event counts of minutes that can still change, "minute:count,..."
    due       score of the user in <prefix>open: a lower bound of its earliest close time
  A session [start, last] is closed (emitted, deleted) once watermark > last + gap: no event
  that is not late can reach it any more.
]]
local rcall = redis.call
local US_PER_MIN = 60000000
local NEG_INF = -9007199254740992

local function fmt(x)
  return string.format('%.0f', x)
end

local function decode_sessions(str)
  local list = {}
  if not str then return list end
  for chunk in string.gmatch(str, '[^|]+') do
    local s, l, n, types = string.match(chunk, '^(%-?%d+) (%-?%d+) (%d+) ?(.*)$')
    local t = {}
    for tok, c in string.gmatch(types, '([^,:]+):(%d+)') do t[tok] = tonumber(c) end
    list[#list + 1] = {s = tonumber(s), l = tonumber(l), n = tonumber(n), t = t}
  end
  return list
end

local function encode_types(t)
  local parts = {}
  for tok, c in pairs(t) do parts[#parts + 1] = tok .. ':' .. c end
  table.sort(parts)
  return table.concat(parts, ',')
end

local function encode_sessions(list)
  local parts = {}
  for i, se in ipairs(list) do
    parts[i] = fmt(se.s) .. ' ' .. fmt(se.l) .. ' ' .. se.n .. ' ' .. encode_types(se.t)
  end
  return table.concat(parts, '|')
end

local function decode_minutes(str)
  local m = {}
  if not str then return m end
  for k, c in string.gmatch(str, '(%-?%d+):(%d+)') do m[tonumber(k)] = tonumber(c) end
  return m
end

-- Minutes that can no longer receive an event that is not late are dropped.
local function encode_minutes(minutes, wm, gap)
  local parts = {}
  for m, c in pairs(minutes) do
    if (m + 1) * US_PER_MIN + gap > wm then parts[#parts + 1] = fmt(m) .. ':' .. c end
  end
  return table.concat(parts, ',')
end

local function new_ctx(keys, gap, ttl, maxlen)
  return {
    prefix = keys[1], stream = keys[2], state = keys[3], open = keys[4], mopen = keys[5],
    sessions = keys[6], alerts = keys[7], late = keys[8], minutes = keys[9], lease = keys[10],
    gap = gap, ttl = ttl, maxlen = maxlen, users = {}, closed = 0, finalized = 0,
  }
end

local function load_user(ctx, uid)
  local st = ctx.users[uid]
  if st then return st end
  local v = rcall('HMGET', ctx.prefix .. 'user:' .. uid, 'sessions', 'minutes', 'due')
  st = {sessions = decode_sessions(v[1]), minutes = decode_minutes(v[2]), due = tonumber(v[3])}
  ctx.users[uid] = st
  return st
end

-- Emit and forget every session of the user with last + gap < wm.
local function close_due(ctx, uid, st, wm)
  local keep, gap = nil, ctx.gap
  for i, se in ipairs(st.sessions) do
    if se.l + gap < wm then
      keep = keep or {}
      rcall('XADD', ctx.sessions, 'MAXLEN', '~', ctx.maxlen, '*',
        'user_id', uid, 'session_id', string.format('%x', se.s), 'start', fmt(se.s), 'end', fmt(se.l),
        'event_count', se.n, 'types', encode_types(se.t))
      ctx.closed = ctx.closed + 1
    end
  end
  if keep then
    for _, se in ipairs(st.sessions) do
      if se.l + gap >= wm then keep[#keep + 1] = se end
    end
    st.sessions = keep
  end
end

-- Write every user loaded in this call back (or delete it when it has no open session).
local function save_users(ctx, wm)
  local gap = ctx.gap
  for uid, st in pairs(ctx.users) do
    local key = ctx.prefix .. 'user:' .. uid
    if #st.sessions == 0 then
      rcall('DEL', key)
      rcall('ZREM', ctx.open, uid)
    else
      local due = st.sessions[1].l + gap
      for i = 2, #st.sessions do
        local d = st.sessions[i].l + gap
        if d < due then due = d end
      end
      if st.due == nil or due < st.due or st.due < wm then
        rcall('ZADD', ctx.open, fmt(due), uid)
        st.due = due
      end
      rcall('HSET', key, 'sessions', encode_sessions(st.sessions),
        'minutes', encode_minutes(st.minutes, wm, gap), 'due', fmt(st.due))
      rcall('PEXPIRE', key, ctx.ttl)
    end
  end
end

-- Close the sessions of users whose due time is behind the watermark (at most limit users).
-- Returns true when more users may be due.
local function sweep(ctx, wm, limit)
  local due = rcall('ZRANGEBYSCORE', ctx.open, '-inf', '(' .. fmt(wm), 'LIMIT', 0, limit)
  for _, uid in ipairs(due) do
    local st = load_user(ctx, uid)
    close_due(ctx, uid, st, wm)
  end
  return #due == limit
end

-- Emit every minute that no event which is not late can reach any more (at most limit).
local function finalize_minutes(ctx, wm, limit)
  local last = math.floor((wm - ctx.gap) / US_PER_MIN) - 1
  local done = rcall('ZRANGEBYSCORE', ctx.mopen, '-inf', fmt(last), 'LIMIT', 0, limit)
  for _, m in ipairs(done) do
    local ckey, hkey = ctx.prefix .. 'count:' .. m, ctx.prefix .. 'hll:' .. m
    rcall('XADD', ctx.minutes, 'MAXLEN', '~', ctx.maxlen, '*', 'minute', fmt(tonumber(m) * US_PER_MIN),
      'events', rcall('GET', ckey) or 0, 'unique_users', rcall('PFCOUNT', hkey))
    rcall('DEL', ckey, hkey)
    rcall('ZREM', ctx.mopen, m)
  end
  ctx.finalized = ctx.finalized + #done
  return #done == limit
end

local function read_watermark(ctx)
  local v = rcall('HMGET', ctx.state, 'wm', 'max')
  return tonumber(v[1]) or NEG_INF, tonumber(v[2]) or NEG_INF
end
