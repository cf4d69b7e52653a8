--[[ user_state: one user's state in a partition: load, settle at the watermark, save, sweep.
  Included after partition_state (its constants, caps and ctx) by apply_batch.lua,
  advance_watermark.lua and read_profile.lua.

  Per-user state, STRING <prefix>user:<user_id>, MessagePack (Redis's built-in cmsgpack: integers
  stay exact, and it costs about half of cjson to encode and decode; `shopstream sessions ID`
  prints it; the JSON of earlier versions, which starts with '{', is still read):
    {s = { {start us, last - start, events, {event_type = count}, first purchase - start (-1: none),
            {category = product views}, {device = first - start}, {country = first - start}}, ... }
                                 open sessions (at most MAX_SESSIONS); a session's click fields reach
                                 the profile when it closes (profile.lua fold_session)
     i = {minute, records, ...}  the user's clicks by minute, for the minutes a click that is not late
                                 can still reach: one 9-byte record per click (the event_id's key,
                                 engine/batch.py click_key, '00000000' without an id, and the click's
                                 second of the minute as a byte): producer retries, the exact 60-s
                                 burst rule, and the minute's click count (rule 1: its records, plus
                                 o); at most MAX_IDS records, MAX_MINUTES minutes
     o = {minute, count, ...}    clicks counted but not recorded (beyond MAX_IDS), when there are any
     m = {}                      empty (the previous version's whole counts: a consumer of that version,
                                 during a rolling upgrade, reads the state instead of rejecting it)
     u = due                     the user's score in <prefix>open: a lower bound of the time the
                                 watermark must pass before a session closes or a minute is dropped
     w = {window, ip[, n]}       the last (IP-rule window, IP) pair forwarded for the user, and how many
                                 IPs were forwarded since that window when more than one (rules.lua)
     lc, lt}                     the country of the user's latest click and its time (impossible travel)
  A session's elements 9-14, when any is set: flags (1: a click came with purchase intent, 2: the
  scripted-clicks signal was raised), the time of its inhuman-speed signal - start (-1: none), the
  count, sum and sum of squares of its in-order gaps between clicks (ms), the IP of its forwarded
  failed login (one a session).  Device identities (agents) are kept with the devices, as '#<agent>',
  and so are the IPv4 /16s of the session's clicks, as '@a.b' (account takeover: networks browsed from).
  In memory a session is a table of named fields (load_user); its devices' and countries' first times stay
  offsets from its start, as stored (start_at shifts them when the start moves earlier): no copy per touch.
  (States written by earlier versions: d = due - start of the first session, i = {fingerprint, ...}
  or {minute, {fingerprint, ...}, ...}, m = {minute, count, ...} (the minutes' whole counts); still
  read, their clicks' seconds taken as 0.)
  Retention, a function of the watermark W only (so of event times, never of how work was batched):
  a click is late when ts + gap < W; a session [start, last] is closed (emitted, deleted) once
  W > last + gap; a minute m (its counts and fingerprints) is kept while a click that is not late
  can still fall in it or in the next minute (the sliding burst rule reads the previous minute):
  while (m + 2) minutes + gap > W.  The state is deleted when nothing is left.
  Caps (hostile input: every per-user structure is bounded, no call can fail half-way):
  MAX_SESSIONS open sessions (a click that would open one more goes to the late stream with the
  reason), MAX_TYPES event types and MAX_VALUES categories per session (more count under OTHER),
  MAX_VALUES devices and countries per session (more are not remembered), MAX_MINUTES minutes (the
  oldest is dropped), MAX_IDS fingerprints (more are not remembered).  What a cap drops is counted
  in ctx.capped (the partition's `capped` counter).
]]
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

-- nil, or {minute, number, ...} (o, and m of earlier versions)
local function minute_pairs(x)
  if x == nil then return true end
  for i = 1, #x, 2 do
    if type(x[i]) ~= 'number' or type(x[i + 1]) ~= 'number' then return false end
  end
  return true
end

-- Click records (see the header): REC bytes, the key then the second of the minute.
local REC = 9
local SECOND = {}
for i = 0, 59 do SECOND[i] = string.char(i) end
-- Click records (see the header) of fingerprints stored by earlier versions, at second 0.
-- A fingerprint (a number, as earlier versions stored it) as a click key: 8 characters of 6 bits,
-- '0' + bits, most significant first (engine/batch.py click_key sends it so).
local function fp_key(fp)
  local b = {}
  for i = 8, 1, -1 do
    b[i] = 48 + fp % 64
    fp = math.floor(fp / 64)
  end
  return string.char(b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8])
end

local function legacy_records(fps)
  local out = {}
  for i, fp in ipairs(fps) do out[i] = fp_key(fp) .. '\0' end
  return table.concat(out)
end

local function load_user(ctx, uid)
  local st = ctx.users[uid]
  if st then return st end
  local raw = redis.pcall('GET', ctx.prefix .. KEY.user .. uid)
  if type(raw) == 'table' then
    return nil, 'state key of the user is unreadable: ' .. tostring(raw.err)
  end
  -- clean: nothing to write back unless changed; ids: minute -> {fingerprint, ...}, nids in all
  st = {sessions = {}, over = {}, ids = {}, nids = 0, clean = true}
  if raw then
    local ok, doc = decode_state(raw)
    if not ok or type(doc) ~= 'table' or type(doc.s) ~= 'table' or (doc.m ~= nil and type(doc.m) ~= 'table')
        or (doc.o ~= nil and type(doc.o) ~= 'table')
        or (type(doc.u) ~= 'number' and type(doc.d) ~= 'number') then
      return nil, "state of the user is not in the engine's format"
    end
    for i, se in ipairs(doc.s) do
      local start = type(se) == 'table' and tonumber(se[1])
      if not start or type(se[2]) ~= 'number' or type(se[3]) ~= 'number' or type(se[4]) ~= 'table'
          or not is_counts(se[4]) or (se[5] ~= nil and type(se[5]) ~= 'number') or not is_counts(se[6])
          or not is_counts(se[7]) or not is_counts(se[8]) then
        return nil, "state of the user is not in the engine's format (session " .. i .. ')'
      end
      local p, flags, fl = se[5], tonumber(se[9]) or 0, tonumber(se[10])
      local sess = {s = start, l = start + se[2], n = se[3], t = se[4], p = p and p >= 0 and start + p or nil,
                    c = se[6] or {}, dv = se[7] or {}, co = se[8] or {},
                    i = flags % 2 == 1 or nil, z = math.floor(flags / 2) % 2 == 1 or nil,
                    fl = fl and fl >= 0 and start + fl or nil, lf = type(se[14]) == 'string' and se[14] or nil}
      if type(se[11]) == 'number' and se[11] > 0 then sess.g = {se[11], tonumber(se[12]) or 0, tonumber(se[13]) or 0} end
      st.sessions[i] = sess
    end
    local counts, over = doc.m, doc.o      -- (m: earlier versions' whole counts, made o below)
    if not minute_pairs(counts) or not minute_pairs(over) then
      return nil, "state of the user is not in the engine's format (minutes)"
    end
    for i = 1, over and #over or 0, 2 do st.over[over[i]] = over[i + 1] end
    if doc.u then
      st.due = doc.u
    elseif #st.sessions > 0 then
      st.due = st.sessions[1].s + doc.d
    else
      return nil, "state of the user is not in the engine's format (no session)"
    end
    local ids = doc.i
    if type(ids) == 'table' and #ids > 0 and type(ids[1]) == 'number' then
      for i = 1, #ids, 2 do
        local recs = ids[i + 1]
        if type(ids[i]) ~= 'number' then return nil, "state of the user is not in the engine's format (ids)" end
        if type(recs) == 'table' then                  -- earlier versions: {fingerprint, ...}
          if not is_counts(recs) then return nil, "state of the user is not in the engine's format (ids)" end
          recs = legacy_records(recs)
        elseif type(recs) ~= 'string' or #recs % REC ~= 0 then
          return nil, "state of the user is not in the engine's format (ids)"
        end
        st.ids[ids[i]] = recs
        st.nids = st.nids + #recs / REC
      end
    elseif type(ids) == 'table' and #ids > 0 and #st.sessions > 0 then
      -- earlier versions: the last few fingerprints; kept with the minute of the latest session
      if not is_counts(ids) then return nil, "state of the user is not in the engine's format (ids)" end
      local last = st.sessions[#st.sessions].l
      st.ids[math.floor(last / US_PER_MIN)] = legacy_records(ids)
      st.nids = #ids
    end
    for i = 1, counts and #counts or 0, 2 do           -- a count beyond the minute's records
      local m = counts[i]
      local extra = counts[i + 1] - (st.ids[m] and #st.ids[m] / REC or 0)
      if extra > 0 then st.over[m] = extra end
    end
    st.lb = st.due                      -- the stored due is the earliest, when it was saved
    if type(doc.w) == 'table' then st.fwd = doc.w end
    if type(doc.lc) == 'string' and type(doc.lt) == 'number' then st.loc = {doc.lc, doc.lt} end
    st.stored = true
    if raw:byte(1) == 123 then           -- JSON: written by a version that counted clicks into the profile
      st.clean = false                   -- rewritten in the current format
      if ctx.on_legacy then ctx.on_legacy(ctx, uid, st) end
    end
  end
  ctx.users[uid] = st
  return st
end

local function new_session(ts)
  return {s = ts, l = ts, n = 0, t = {}, c = {}, dv = {}, co = {}}
end

-- A session's devices and countries hold their first times as offsets from the session's start
-- (as stored: no copy on load or save); an earlier start shifts them.
local function start_at(se, ts)
  if ts >= se.s then return end
  local by = se.s - ts
  for k, off in pairs(se.dv) do se.dv[k] = off + by end
  for k, off in pairs(se.co) do se.co[k] = off + by end
  se.s = ts
end

-- Merge session se into session into (an event bridged the gap between them).
local function merge_session(ctx, into, se)
  start_at(into, se.s)
  if se.l > into.l then into.l = se.l end
  if se.p and (not into.p or se.p < into.p) then into.p = se.p end
  into.n = into.n + se.n
  for k, c in pairs(se.t) do count_capped(ctx, into.t, k, c, MAX_TYPES) end
  for k, c in pairs(se.c) do count_capped(ctx, into.c, k, c, MAX_VALUES) end
  local by = se.s - into.s
  for k, off in pairs(se.dv) do first_capped(ctx, into.dv, k, off + by, MAX_VALUES) end
  for k, off in pairs(se.co) do first_capped(ctx, into.co, k, off + by, MAX_VALUES) end
  into.i = into.i or se.i
  into.z = into.z or se.z
  if se.fl and (not into.fl or se.fl < into.fl) then into.fl = se.fl end
  if se.g then
    local g = into.g or {0, 0, 0}
    into.g = {g[1] + se.g[1], g[2] + se.g[2], g[3] + se.g[3]}
  end
end

-- The user's clicks in the 60 whole seconds up to ts (seconds ts-59 .. ts), from the click records
-- of ts's minute and the one before (exact: a minute's records are kept while a click that is not
-- late can fall in it or in the next minute).
local function clicks_in_60s(st, ts)
  local m = math.floor(ts / US_PER_MIN)
  local sec = math.floor(ts / 1000000) % 60
  local n = 0
  local recs = st.ids[m]
  if recs then
    for k = REC, #recs, REC do if recs:byte(k) <= sec then n = n + 1 end end
  end
  recs = st.ids[m - 1]
  if recs then
    for k = REC, #recs, REC do if recs:byte(k) > sec then n = n + 1 end end
  end
  return n
end

-- The user's minutes at most MAX_MINUTES: before a click opens a new one, the oldest goes.
local function cap_minutes(ctx, st)
  local n, oldest = 0, nil
  for k in pairs(st.ids) do
    n = n + 1
    if not oldest or k < oldest then oldest = k end
  end
  for k in pairs(st.over) do
    if not st.ids[k] then n = n + 1 end
    if not oldest or k < oldest then oldest = k end
  end
  if n < MAX_MINUTES then return end
  ctx.capped = ctx.capped + 1
  st.over[oldest] = nil
  if st.ids[oldest] then
    st.nids = st.nids - #st.ids[oldest] / REC
    st.ids[oldest] = nil
  end
end

-- A click at ts with key (engine/batch.py click_key; '' without an event_id): true when a click with
-- that key is among the user's records (a producer retry, as long as the click is not late);
-- otherwise it is counted in its minute (a record, while fewer than MAX_IDS are kept; beyond them a
-- count in st.over) and false.
local function record_click(ctx, st, key, ts)
  if type(key) == 'number' then key = key ~= 0 and fp_key(key) or '' end    -- (a caller of an earlier version)
  if key ~= '' then
    for _, recs in pairs(st.ids) do
      local at = recs:find(key, 1, true)
      while at do
        if at % REC == 1 then return true end
        at = recs:find(key, at + 1, true)
      end
    end
  end
  st.clean = false
  local m = math.floor(ts / US_PER_MIN)
  local recs = st.ids[m]
  if not recs and not st.over[m] then cap_minutes(ctx, st) end
  if st.nids >= MAX_IDS then
    ctx.capped = ctx.capped + 1
    st.over[m] = (st.over[m] or 0) + 1
    return false
  end
  st.ids[m] = (recs or '') .. (key ~= '' and key or '00000000') .. SECOND[math.floor(ts / 1000000) % 60]
  st.nids = st.nids + 1
  return false
end

-- The user's clicks in minute m (rule 1): its records and what was counted beyond them.
local function minute_count(st, m)
  local recs = st.ids[m]
  return (recs and #recs / REC or 0) + (st.over[m] or 0)
end

-- Is minute m still needed at watermark wm (see the header)?
local function minute_kept(ctx, m, wm)
  return (m + 2) * US_PER_MIN + ctx.gap > wm
end

-- The earliest watermark that changes the user's state (a session closes, a minute is dropped).
local function due_of(ctx, st)
  local due
  for _, se in ipairs(st.sessions) do
    local d = se.l + ctx.gap
    if not due or d < due then due = d end
  end
  for m in pairs(st.over) do
    local d = (m + 2) * US_PER_MIN + ctx.gap - 1
    if not due or d < due then due = d end
  end
  for m in pairs(st.ids) do
    local d = (m + 2) * US_PER_MIN + ctx.gap - 1
    if not due or d < due then due = d end
  end
  return due
end

-- Bring a user's state to watermark wm: emit and forget every session with last + gap < wm, drop
-- the minutes (counts, fingerprints) no click that is not late can reach.  Done before a click
-- touches the user and before the state is saved, so what a click sees depends on wm only.
-- st.lb, a lower bound of due_of (nil: no session and no minute), lets a touch skip all of it
-- while nothing can be due (most touches: the watermark moves a little per click).
local function settle_user(ctx, uid, st, wm)
  if st.settled == wm or (st.lb and wm <= st.lb) then return end
  st.settled = wm
  local keep, gap = nil, ctx.gap
  for _, se in ipairs(st.sessions) do
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
  for m in pairs(st.over) do
    if not minute_kept(ctx, m, wm) then
      st.over[m] = nil
      st.clean = false
    end
  end
  for m, recs in pairs(st.ids) do
    if not minute_kept(ctx, m, wm) then
      st.ids[m] = nil
      st.nids = st.nids - #recs / REC
      st.clean = false
    end
  end
  st.lb = due_of(ctx, st)
end

-- A click added to minute m and to a session ending at last: both may be due before anything the
-- state held (an out-of-order click), so the bound comes down if they are.
local function lower_due(ctx, st, m, last)
  local d = math.min((m + 2) * US_PER_MIN + ctx.gap - 1, last + ctx.gap)
  if not st.lb or d < st.lb then st.lb = d end
end

-- Settle every user loaded in this call at the final watermark, then write back those whose state
-- changed (or delete a state with nothing left).
local function save_users(ctx, wm)
  for uid, st in pairs(ctx.users) do
    local key = ctx.prefix .. KEY.user .. uid
    settle_user(ctx, uid, st, wm)
    local due = due_of(ctx, st)
    if not due then
      if st.stored or st.swept then        -- (a transaction's user without state has nothing to delete)
        rcall('DEL', key)
        rcall('ZREM', ctx.open, uid)
      end
    else
      if st.due == nil or due < st.due or st.due < wm then
        rcall('ZADD', ctx.open, fmt(due), uid)
        st.due = due
        st.clean = false                   -- the state keeps due
      end
      if not st.clean then
        local ids, over = {}, nil
        for m, recs in pairs(st.ids) do ids[#ids + 1] = m; ids[#ids + 1] = recs end
        for m, c in pairs(st.over) do
          over = over or {}
          over[#over + 1] = m; over[#over + 1] = c
        end
        local doc = {s = {}, u = st.due, o = over, m = {}}   -- (m: empty; the previous version requires it)
        if #ids > 0 then doc.i = ids end
        if st.fwd then doc.w = st.fwd end
        if st.loc then doc.lc, doc.lt = st.loc[1], st.loc[2] end
        for i, se in ipairs(st.sessions) do
          local row = {se.s, se.l - se.s, se.n, se.t, se.p and se.p - se.s or -1, se.c, se.dv, se.co}
          if se.i or se.z or se.fl or se.g or se.lf then
            local g = se.g
            row[9], row[10] = (se.i and 1 or 0) + (se.z and 2 or 0), se.fl and se.fl - se.s or -1
            row[11], row[12], row[13] = g and g[1] or 0, g and g[2] or 0, g and g[3] or 0
            row[14] = se.lf
          end
          doc.s[i] = row
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

