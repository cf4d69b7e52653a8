--[[ profile: the unified customer profile, HASH <prefix>profile:<user_id>, readable with HGETALL.
  Included after partition_state by the scripts that change a partition's state, and by read_profile.lua.  A profile is
  loaded once per script call (HGETALL), changed in memory, and written back once (HSET of the
  changed fields, PEXPIRE profile_ttl).  Fields (times are µs since the epoch: dates are formatted
  in one language, Python, when a profile is read: engine/export.py profile_record):
    first_seen, last_seen       earliest / latest event time of any source
    events                      click events of the closed sessions
    sessions                    sessions closed
    device:<name>               first time a device was seen (clicks; at most PROFILE_VALUES devices)
    agent:<hash>                first time a device identity (device + user agent) was seen (same cap)
    country:<CC>                first time a country was seen (clicks, transactions; at most PROFILE_VALUES)
    category:<name>             product views per catalog category (closed sessions; at most
                                PROFILE_VALUES categories, the others under category:(other))
    capped                      devices / countries / categories a cap left out (hostile input)
    orders, spend_minor, currency   completed transactions and their sum (minor units)
    failed_payments             failed transactions
    tickets, open_tickets       support tickets seen / open now (from <prefix>tickets:<user_id>)
    last_alert                  "<signal code> <event time of the signal>"
    risk_score, risk_at         decayed sum of signal points as of risk_at (score.lua)
    action, reasons             the latest decision's action; the latest signals "code=points@time,..."
    changed_at                  latest account-change ticket (password reset, e-mail / address change)
    changes                     the latest 8 account changes "kind@time" (account takeover)
    net:<a.b>                   first time a payment or a click came from the IPv4 /16 a.b (same cap
                                as devices; a session carries its clicks' /16s in its devices as '@a.b')
    refund_tickets              refund-type tickets seen
    loc                         "<country> <time>" of the latest closed session or payment (travel)
    ato                         "<day> <points>": the account-takeover points raised that day
    last_order                  "<time> <fingerprint> <amount> <ip> <older> <stored>": the latest completed
                                order and the others of the takeover's recent hours (rules.lua remembered)
    recent_tx                   fingerprints of the last RECENT_IDS transaction ids (producer retries)
  What clicks teach the profile travels with the open session (partition_state.lua) and is folded
  in once, when the session closes (fold_session): one profile write per session instead of one
  per batch.  Rules that need it earlier read the open sessions (note_open_sessions), and
  lua/read_profile.lua shows a profile with its open sessions folded in.
]]

-- Times written by earlier versions were ISO-8601 text ('YYYY-MM-DDTHH:MM:SS.ffffffZ'): still read
-- (days-from-civil, Howard Hinnant's algorithm); every time written now is µs since the epoch.
local function legacy_time(text)
  if type(text) ~= 'string' then return nil end
  local y, mo, d, h, mi, s, f = text:match('^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)%.(%d%d%d%d%d%d)Z$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return (days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)) * 1000000 + tonumber(f)
end

local PROFILE_VALUES = 64     -- distinct devices, countries, categories kept per profile

-- A profile of stored fields f (field -> text), nothing changed yet; kinds: distinct values stored
-- per kind of capped field (device, country, category, agent, net), counted when a new value first
-- asks to be admitted (most loads admit none: a pattern match per field saved).
local function new_profile(f)
  return {f = f, tm = {}, first = {}, last = nil, dirty = {}, kinds = nil}
end

local function count_kinds(f)
  local kinds = {device = 0, country = 0, category = 0, agent = 0, net = 0}
  for field in pairs(f) do
    local kind = field:match('^(%a+):')
    if kinds[kind] then kinds[kind] = kinds[kind] + 1 end
  end
  return kinds
end

-- May the profile hold field <kind>:<name>?  A new one beyond PROFILE_VALUES of its kind may not.
-- (Every new field of these kinds is admitted here first, so the count made at the first new one
-- is the stored fields'.)
local function admit(pr, kind, field)
  if pr.f[field] ~= nil or pr.first[field] ~= nil then return true end
  if not pr.kinds then pr.kinds = count_kinds(pr.f) end
  if pr.kinds[kind] >= PROFILE_VALUES then
    pr.f.capped = tostring((tonumber(pr.f.capped) or 0) + 1)
    pr.dirty.capped = true
    return false
  end
  pr.kinds[kind] = pr.kinds[kind] + 1
  return true
end

-- The user's profile {f = fields as stored, tm = parsed times, first = earliest times of this call,
-- last = latest event time of this call, dirty = {field = true}}, or nil and a reason when the key is
-- not a hash (such events are returned as poison, like unreadable session state).
local function load_profile(ctx, uid)
  local pr = ctx.profiles[uid]
  if pr then return pr end
  local raw = redis.pcall('HGETALL', ctx.prefix .. KEY.profile .. uid)
  if raw.err then return nil, 'profile of the user is unreadable: ' .. tostring(raw.err) end
  local f = {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  pr = new_profile(f)
  ctx.profiles[uid] = pr
  return pr
end

local function pset(pr, field, value)
  pr.f[field] = value
  pr.dirty[field] = true
end

local function pincr(pr, field, by)
  pset(pr, field, fmt((tonumber(pr.f[field]) or 0) + by))
end

-- A stored time field in µs (nil when absent or unreadable); read once per call.
local function ptime(pr, field)
  local t = pr.tm[field]
  if t == nil then
    local text = pr.f[field]
    t = tonumber(text) or legacy_time(text) or false
    pr.tm[field] = t
  end
  return t or nil
end

local function set_ptime(pr, field, us)
  pr.tm[field] = us
  pset(pr, field, fmt(us))
end

-- first_seen, device:<d>, country:<c>: the earliest time.  Kept as a number during the call and
-- compared with the stored time when the profile is saved.
local function first_time(pr, field, ts)
  local t = pr.first[field]
  if not t or ts < t then pr.first[field] = ts end
end

-- The earliest time of a first-seen field, stored or seen in this call (rules read it).
local function first_of(pr, field)
  local stored, seen = ptime(pr, field), pr.first[field]
  if stored and seen then return math.min(stored, seen) end
  return stored or seen
end

local function touch(pr, ts)
  first_time(pr, 'first_seen', ts)
  if not pr.last or ts > pr.last then pr.last = ts end
end

-- The first/last times of this call into the profile's fields (the earliest / latest wins).
local function settle(pr)
  for field, t in pairs(pr.first) do
    local stored = ptime(pr, field)
    if not stored or t < stored then set_ptime(pr, field, t) end
  end
  if pr.last then
    local stored = ptime(pr, 'last_seen')
    if not stored or pr.last > stored then set_ptime(pr, 'last_seen', pr.last) end
  end
end

-- Write the changed profiles back; each changed profile also gets one record in the profile
-- changelog (K.profiles, <prefix>profiles: user_id, changes = JSON object of the changed fields and
-- their new values, ts = latest event time of this call that touched the profile, when there is one),
-- which the archiver turns into the lake's profile_changes (engine/lake) so profiles can be historized.
-- The rules' memory (MEMORY: retries, the last order, the day's takeover points, the change list, the
-- latest place: it changes with every payment), not attributes to historize, is written but not logged (engine/export.py INTERNAL: not exported).
local MEMORY = {recent_tx = true, last_order = true, ato = true, changes = true, loc = true}
local function save_profiles(ctx, profile_ttl)
  for uid, pr in pairs(ctx.profiles) do
    settle(pr)
    local args, n, changes = {}, 0, {}
    for field in pairs(pr.dirty) do
      args[n + 1] = field
      args[n + 2] = pr.f[field]
      if not MEMORY[field] then changes[field] = pr.f[field] end
      n = n + 2
    end
    if n > 0 then
      local key = ctx.prefix .. KEY.profile .. uid
      hset_all(key, args)
      rcall('PEXPIRE', key, profile_ttl)
      if pr.last then
        rcall('XADD', K.profiles, 'MAXLEN', '~', ctx.maxlen, '*', 'user_id', uid, 'changes', cjson.encode(changes),
          'ts', fmt(pr.last))
      else
        rcall('XADD', K.profiles, 'MAXLEN', '~', ctx.maxlen, '*', 'user_id', uid, 'changes', cjson.encode(changes))
      end
    end
  end
end

-- A session's times, devices and countries into the profile.  Idempotent (the earliest / latest
-- wins): the transaction rules note open sessions, which are noted again when they close.
local function note_session_times(pr, se)
  touch(pr, se.s)
  touch(pr, se.l)
  for d, t in pairs(se.dv) do             -- devices, device identities as '#<agent>', IPv4 /16s as '@a.b'
    local b = d:byte(1)
    local kind = b == 35 and 'agent' or b == 64 and 'net' or 'device'
    local field = kind == 'device' and 'device:' .. d or kind .. ':' .. d:sub(2)
    if admit(pr, kind, field) then first_time(pr, field, se.s + t) end
  end
  for c, t in pairs(se.co) do                -- (first times are offsets from the start: user_state.lua)
    local field = 'country:' .. c
    if admit(pr, 'country', field) then first_time(pr, field, se.s + t) end
  end
end

-- A session's event and category counts into the profile (sign -1: out of it).
local function add_session_counts(pr, se, sign)
  pincr(pr, 'events', sign * se.n)
  for k, n in pairs(se.c) do
    local field = 'category:' .. k
    if sign < 0 or admit(pr, 'category', field) then pincr(pr, field, sign * n)
    else pincr(pr, 'category:' .. OTHER, n) end
  end
end

-- A session's click fields into the profile: once, when it closes (or into a reader's copy).
local function fold_session(pr, se)
  note_session_times(pr, se)
  add_session_counts(pr, se, 1)
end

-- The first/last-seen times of the user's open sessions (st from load_user; nil: none).
local function note_open_sessions(pr, st)
  if not st then return end
  for _, se in ipairs(st.sessions) do note_session_times(pr, se) end
end

-- State in the JSON of earlier versions (partition_state.lua load_user, ctx.on_legacy): those versions
-- added a click's event and category counts to the profile at once.  Take the open sessions' counts
-- out again, in the same call that rewrites the state in the current format, so that folding the
-- sessions when they close counts every click once.
local function uncount_legacy(ctx, uid, st)
  local pr = load_profile(ctx, uid)
  if not pr then return end
  for _, se in ipairs(st.sessions) do add_session_counts(pr, se, -1) end
end
