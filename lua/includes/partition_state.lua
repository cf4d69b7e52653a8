--[[ partition_state: shared helpers for the scripts that change a partition's state.
  Included (inlined by engine/scripts.py) by apply_batch.lua, advance_watermark.lua and read_profile.lua.
  Times are integer microseconds since the epoch, carried in Lua doubles (exact below 2^53);
  fmt() prints them without an exponent.

  Per-user state, STRING <prefix>user:<user_id>, MessagePack (Redis's built-in cmsgpack: integers
  stay exact, and it costs about half of cjson to encode and decode; `shopstream sessions ID`
  prints it; the JSON of earlier versions, which starts with '{', is still read):
    {s = { {start us, last - start, events, {event_type = count}, first purchase - start (-1: none),
            {category = product views}, {device = first - start}, {country = first - start}}, ... }
                                 open sessions; a session's click fields reach the profile when it
                                 closes (profile.lua fold_session)
     m = {minute, count, ...}    per-user counts of minutes that end after the watermark (rule 1;
                                 exact for events within the bound B, like the sessions)
     d = due - start of the first session,   due = the user's score in <prefix>open, a lower
                                              bound of its earliest close time
     i = {fingerprint, ...}      the user's last RECENT_IDS event_id fingerprints (producer retries)
     w = {window, ip}}           the last (IP-rule window, IP) pair forwarded for the user (rules.lua)
  Minute counts are kept one minute longer than the watermark needs: the sliding burst rule
  reads the previous minute.
  A session [start, last] is closed (emitted, deleted) once watermark > last + gap: no event
  that is not late can reach it any more.
]]
local rcall = redis.call
local US_PER_MIN = 60000000
local NEG_INF = -9007199254740992
local RECENT_IDS = 16

local function fmt(x)
  return string.format('%.0f', x)
end

local function new_ctx(keys, gap, ttl, maxlen)
  return {
    prefix = keys[1], stream = keys[2], state = keys[3], open = keys[4], mopen = keys[5],
    sessions = keys[6], alerts = keys[7], late = keys[8], minutes = keys[9], lease = keys[10],
    gap = gap, ttl = ttl, maxlen = maxlen, users = {}, tombs = {}, closed = 0, finalized = 0,
    on_close = nil,   -- function(ctx, uid, session) called for every session closed
  }
end

-- The user's state, or nil and a reason when it cannot be read (a key of another type, or not
-- the engine's encoding): such a user's events are returned as poison instead of being applied, so
-- a bad key can never make the script fail half-way (Redis does not roll a script back).
local function decode_state(raw)
  if raw:byte(1) == 123 then return pcall(cjson.decode, raw) end   -- '{': the JSON of earlier versions
  return pcall(cmsgpack.unpack, raw)
end

-- nil, or a table of numbers (counts, or offsets from the session start)
local function is_counts(x)
  if x == nil then return true end
  if type(x) ~= 'table' then return false end
  for _, v in pairs(x) do
    if type(v) ~= 'number' then return false end
  end
  return true
end

local function first_times(start, offsets)
  local out = {}
  for k, off in pairs(offsets or {}) do out[k] = start + off end
  return out
end

local function load_user(ctx, uid)
  local st = ctx.users[uid]
  if st then return st end
  local raw = redis.pcall('GET', ctx.prefix .. 'user:' .. uid)
  if type(raw) == 'table' then
    return nil, 'state key of the user is unreadable: ' .. tostring(raw.err)
  end
  st = {sessions = {}, minutes = {}, clean = true}   -- clean: nothing to write back unless changed
  if raw then
    local ok, doc = decode_state(raw)
    if not ok or type(doc) ~= 'table' or type(doc.s) ~= 'table' or #doc.s == 0 or type(doc.m) ~= 'table'
        or type(doc.d) ~= 'number' then
      return nil, "state of the user is not in the engine's format"
    end
    for i, se in ipairs(doc.s) do
      local start = type(se) == 'table' and tonumber(se[1])
      if not start or type(se[2]) ~= 'number' or type(se[3]) ~= 'number' or type(se[4]) ~= 'table'
          or not is_counts(se[4]) or (se[5] ~= nil and type(se[5]) ~= 'number') or not is_counts(se[6])
          or not is_counts(se[7]) or not is_counts(se[8]) then
        return nil, "state of the user is not in the engine's format (session " .. i .. ')'
      end
      local p = se[5]
      st.sessions[i] = {s = start, l = start + se[2], n = se[3], t = se[4], p = p and p >= 0 and start + p or nil,
                        c = se[6] or {}, dv = first_times(start, se[7]), co = first_times(start, se[8])}
    end
    local m = doc.m
    for i = 1, #m, 2 do
      if type(m[i]) ~= 'number' or type(m[i + 1]) ~= 'number' then
        return nil, "state of the user is not in the engine's format (minutes)"
      end
      st.minutes[m[i]] = m[i + 1]
    end
    st.due = st.sessions[1].s + doc.d
    if type(doc.i) == 'table' then st.ids = doc.i end
    if type(doc.w) == 'table' then st.fwd = doc.w end
    st.stored = true
    if raw:byte(1) == 123 then           -- JSON: written by a version that counted clicks into the profile
      st.clean = false                   -- rewritten in the current format
      if ctx.on_legacy then ctx.on_legacy(ctx, uid, st) end
    end
  end
  st.ids = st.ids or {}
  ctx.users[uid] = st
  return st
end

local function new_session(ts)
  return {s = ts, l = ts, n = 0, t = {}, c = {}, dv = {}, co = {}}
end

local function merge_first(into, from)
  for k, t in pairs(from) do
    if not into[k] or t < into[k] then into[k] = t end
  end
end

-- Merge session se into session into (an event bridged the gap between them).
local function merge_session(into, se)
  if se.s < into.s then into.s = se.s end
  if se.l > into.l then into.l = se.l end
  if se.p and (not into.p or se.p < into.p) then into.p = se.p end
  into.n = into.n + se.n
  for k, c in pairs(se.t) do into.t[k] = (into.t[k] or 0) + c end
  for k, c in pairs(se.c) do into.c[k] = (into.c[k] or 0) + c end
  merge_first(into.dv, se.dv)
  merge_first(into.co, se.co)
end

-- Was this event_id fingerprint among the user's last RECENT_IDS? Remembers it if not.
local function seen_before(st, fp)
  local set = st.idset
  if not set then
    set = {}
    for _, x in ipairs(st.ids) do set[x] = true end
    st.idset = set
  end
  if set[fp] then return true end
  set[fp] = true
  st.clean = false
  local ids = st.ids
  ids[#ids + 1] = fp
  if #ids > RECENT_IDS then set[table.remove(ids, 1)] = nil end
  return false
end

-- Emit and forget every session of the user with last + gap < wm.
local function close_due(ctx, uid, st, wm)
  local keep, gap = nil, ctx.gap
  for i, se in ipairs(st.sessions) do
    if se.l + gap < wm then
      keep = keep or {}
      rcall('XADD', ctx.sessions, 'MAXLEN', '~', ctx.maxlen, '*',
        'user_id', uid, 'session_id', string.format('%x', se.s), 'start', fmt(se.s), 'end', fmt(se.l),
        'event_count', se.n, 'types', cjson.encode(se.t), 'categories', cjson.encode(se.c))
      ctx.closed = ctx.closed + 1
      if ctx.on_close then ctx.on_close(ctx, uid, se) end
    end
  end
  if keep then
    for _, se in ipairs(st.sessions) do
      if se.l + gap >= wm then keep[#keep + 1] = se end
    end
    st.sessions = keep
    st.clean = false
  end
end

-- Close what is due at the final watermark, then write back every user loaded in this call whose
-- state changed (or delete it when it has no open session left).
local function save_users(ctx, wm)
  local gap = ctx.gap
  for uid, st in pairs(ctx.users) do
    local key = ctx.prefix .. 'user:' .. uid
    close_due(ctx, uid, st, wm)
    if #st.sessions == 0 then
      if st.stored or st.swept then        -- (a transaction's user without state has nothing to delete)
        rcall('DEL', key)
        rcall('ZREM', ctx.open, uid)
      end
    else
      local due = st.sessions[1].l + gap
      for i = 2, #st.sessions do
        local d = st.sessions[i].l + gap
        if d < due then due = d end
      end
      if st.due == nil or due < st.due or st.due < wm then
        rcall('ZADD', ctx.open, fmt(due), uid)
        st.due = due
        st.clean = false                   -- the state keeps due - start
      end
      if not st.clean then
        local ms = {}
        for m, c in pairs(st.minutes) do   -- kept while events within B can reach them or the next minute
          if (m + 2) * US_PER_MIN > wm then ms[#ms + 1] = m; ms[#ms + 1] = c end
        end
        local doc = {s = {}, m = ms, d = st.due - st.sessions[1].s}
        if #st.ids > 0 then doc.i = st.ids end
        if st.fwd then doc.w = st.fwd end
        for i, se in ipairs(st.sessions) do
          local dv, co = {}, {}
          for k, t in pairs(se.dv) do dv[k] = t - se.s end
          for k, t in pairs(se.co) do co[k] = t - se.s end
          doc.s[i] = {se.s, se.l - se.s, se.n, se.t, se.p and se.p - se.s or -1, se.c, dv, co}
        end
        rcall('SET', key, cmsgpack.pack(doc), 'PX', ctx.ttl)
      end
    end
  end
end

-- Load the users whose due time is behind the watermark (at most limit users).
-- Returns true when more users may be due.
local function sweep(ctx, wm, limit)
  local due = rcall('ZRANGEBYSCORE', ctx.open, '-inf', '(' .. fmt(wm), 'LIMIT', 0, limit)
  for _, uid in ipairs(due) do   -- save_users closes and writes them
    local st = load_user(ctx, uid)
    if st then st.swept = true else rcall('ZREM', ctx.open, uid) end   -- unreadable: left for inspection
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
  local v = rcall('HMGET', ctx.state, 'wm', 'max', 'tombs_until')
  return tonumber(v[1]) or NEG_INF, tonumber(v[2]) or NEG_INF, tonumber(v[3]) or NEG_INF
end

-- Was the user erased (GDPR)? Looked up only while the partition may hold a live tombstone.
local function erased(ctx, uid)
  local hit = ctx.tombs[uid]
  if hit == nil then
    hit = rcall('EXISTS', ctx.prefix .. 'tomb:' .. uid) == 1
    ctx.tombs[uid] = hit
  end
  return hit
end
