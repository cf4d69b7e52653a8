--[[ rules: the fraud rules, evaluated inside the apply script together with the state they read.
  Included after partition_state, user_state, profile, alerts (emit, forward, the caps), score
  (signals, decisions, retractions) and geo.  ctx.rules = the decoded rules argument
  (engine/rules.py Rules.to_lua; false disables a rule).  docs/rules.md says what each rule
  means and why; the functions below are called by apply_batch.lua / advance_watermark.lua.
  Every rule decides on the event that triggers it; a rule that later data can refute (inhuman
  speed, honest declines) retracts its signal when that data arrives (score.lua retract).
  Velocity over several horizons: a ZSET member -> the latest time it was seen (the latest EXACT
  members); a horizon counts the members of its densest window that contains the event
  (densest_members): sliding windows, bounded in memory, independent of the arrival order.
]]
--@include score
--@include geo
local HOUR_US = 3600000000
local DAY_US = 24 * HOUR_US
local FWD_US = 10 * US_PER_MIN        -- a user's IP / card is forwarded to its subject at most once per period
local WALLETS = {apple_pay = true, google_pay = true, paypal = true, shop_pay = true, amazon_pay = true,
                 samsung_pay = true, wallet = true}

local function longest(horizons)
  local h = 0
  for _, x in ipairs(horizons) do if x[1] > h then h = x[1] end end
  return h
end

-- member seen at ts in velocity ZSET key (kept: the latest EXACT members of the last `keep` µs).
-- Returns the member's previous latest time (nil: new) and whether the key is at its cap (a new
-- member pushed an older one out: more than EXACT distinct members lately).
local function track(key, member, ts, keep, ttl_ms)
  local prev = tonumber(rcall('ZSCORE', key, member))
  if not prev or ts > prev then rcall('ZADD', key, ts, member) end
  local capped = false
  if not prev then
    rcall('ZREMRANGEBYSCORE', key, '-inf', '(' .. fmt(ts - keep))
    capped = rcall('ZREMRANGEBYRANK', key, 0, -(EXACT + 1)) > 0
  end
  rcall('PEXPIRE', key, ttl_ms)
  return prev, capped
end

-- IPv4 text -> number (nil: not IPv4), and whether it is in one of ranges {{first, last}, ...}.
local function in_ranges(ip, ranges)
  if #ranges == 0 then return false end
  local a, b, c, d = ip:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  if not a then return false end
  local n = ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
  for _, r in ipairs(ranges) do
    if n >= r[1] and n <= r[2] then return true end
  end
  return false
end

-- Impossible travel: country at ts against the user's latest known place.  Fires when the two
-- centres are min_km or more apart and the speed needed is above max_kmh.  The latest place is the
-- state's (st.loc); a state swept away after its last session closed leaves it in the profile (loc,
-- written when a session closes and by payments): read from the loaded profile, or (a click, no
-- profile loaded) with one HGET; a profile key that is not a hash: no place.
local function travel(ctx, pr, st, uid, country, ts, entry)
  local R = ctx.rules
  if country == '' then return end
  local last = st and st.loc
  if not last and R.travel then
    local stored, known = nil, pr or ctx.profiles[uid]
    if known then stored = known.f.loc else stored = redis.pcall('HGET', ctx.prefix .. KEY.profile .. uid, 'loc') end
    local c, t = nil, nil
    if type(stored) == 'string' then c, t = stored:match('^(%S+) (%d+)$') end
    if c then last = {c, tonumber(t)} end
  end
  if R.travel and last and last[1] ~= country then
    local km = country_km(last[1], country)
    if km and km >= R.travel[2] then
      local hours = math.max(math.abs(ts - last[2]) / HOUR_US, 1 / 60)
      if km / hours > R.travel[1] then
        user_alert(ctx, pr, {rule = 'impossible_travel', sev = R.travel_sev, uid = uid,
          window = math.floor(ts / HOUR_US) * HOUR_US, count = math.floor(km / hours), threshold = R.travel[1],
          entry = entry, evidence = {from = last[1], to = country, km = math.floor(km),
                                     minutes = math.floor(math.abs(ts - last[2]) / US_PER_MIN)}},
          ts, R.pts.impossible_travel)
      end
    end
  end
  if st then
    local loc = st.loc
    if not loc then st.loc = {country, ts} elseif ts >= loc[2] then loc[1], loc[2] = country, ts end
  end
  if pr then                             -- a payment: the profile's place too (it outlives the sessions)
    local stored = pr.f.loc and tonumber(pr.f.loc:match(' (%d+)$'))
    if not stored or ts >= stored then pset(pr, 'loc', country .. ' ' .. fmt(ts)) end
  end
end

-- Inhuman speed, on the purchase / checkout click that shows it: a purchase less than speed_us
-- after the session's first event, a checkout before any product interaction; not for a visit that
-- came with purchase intent (a deep link, buy again: engine/schema.py flags_of).  The session remembers
-- the signal's time (se.fl) so that its close, or an express-wallet payment, can take it back.
local function speed_points(R, se)
  if se.i then return 0 end
  local pts = 0
  if R.speed_us and se.p and se.p - se.s < R.speed_us then pts = pts + R.pts.inhuman_speed end
  if R.speed_noview and (se.t.checkout or 0) > 0 and (se.t.product_view or 0) + (se.t.add_to_cart or 0) == 0 then
    pts = pts + R.pts.no_product
  end
  return pts
end

local function speed_rule(ctx, uid, se, ts, entry)
  local R = ctx.rules
  if se.fl or not (R.speed_us or R.speed_noview) then return end
  local pts = speed_points(R, se)
  if pts > 0 then
    local fast = se.p and se.p - se.s or 0
    if user_alert(ctx, nil, {rule = 'inhuman_speed', sev = R.speed_sev, uid = uid, window = se.s,
        count = math.floor(fast / 1000), threshold = math.floor((R.speed_us or 0) / 1000), entry = entry,
        evidence = {purchase_after_ms = se.p and math.floor(fast / 1000) or nil, session_start_ms = ms(se.s),
                    product_views = se.t.product_view or 0, checkouts = se.t.checkout or 0}}, ts, pts) then
      se.fl = ts
    end
  end
end

-- Scripted clicks: a session whose gaps between clicks (in order) are machine-regular.
local function scripted_rule(ctx, uid, se, ts, entry)
  local R = ctx.rules
  local g = se.g
  if not R.script or se.z or not g or g[1] < R.script[1] then return end
  local mean = g[2] / g[1]
  if mean <= 0 or mean * 1000 > R.script[3] then return end
  local cv = math.sqrt(math.max(0, g[3] / g[1] - mean * mean)) / mean
  if cv < R.script[2] then
    se.z = true
    user_alert(ctx, nil, {rule = 'scripted_clicks', sev = R.script_sev, uid = uid, window = se.s,
      count = g[1], threshold = R.script[1], entry = entry,
      evidence = {mean_gap_ms = math.floor(mean), cv = math.floor(cv * 1000) / 1000, clicks = se.n}},
      ts, R.pts.scripted_clicks)
  end
end

-- The click rules, on every applied click (after it joined session se).  c = the user's clicks of
-- minute m so far.
local function click_rules(ctx, uid, st, se, m, c, ts, entry, etype, country, flags)
  local R = ctx.rules
  if flags >= 4 and se.n == 1 and R.pts.automation > 0 then   -- a script's or a headless browser's agent:
                                                               -- looked at once a session (alerted once a day)
    user_alert(ctx, nil, {rule = 'automation', sev = R.auto_sev, uid = uid, window = math.floor(ts / DAY_US) * DAY_US,
      count = 1, threshold = 1, entry = entry}, ts, R.pts.automation)
  end
  if R.epm and c > R.epm then          -- not == epm + 1: a threshold lowered mid-minute (emit dedups)
    user_alert(ctx, nil, {rule = 'events_per_minute', sev = R.epm_sev, uid = uid, window = m * US_PER_MIN,
      count = c, threshold = R.epm, entry = entry}, ts, R.pts.events_per_minute)
  end
  -- the exact count only when the two minutes together could be over it
  local n = R.burst and c + minute_count(st, m - 1) > R.burst and clicks_in_60s(st, ts)
  if n and n > R.burst then
    user_alert(ctx, nil, {rule = 'burst', sev = R.burst_sev, uid = uid, window = m * US_PER_MIN,
      count = n, threshold = R.burst, entry = entry,
      evidence = {window_end_ms = ms(ts), clicks_last_60s = n}}, ts, R.pts.burst)
  end
  if etype == 'purchase' or etype == 'checkout' then speed_rule(ctx, uid, se, ts, entry) end
  scripted_rule(ctx, uid, se, ts, entry)
  if country ~= '' then
    local loc = st.loc
    if loc and loc[1] == country then
      if ts > loc[2] then loc[2] = ts end
    else
      travel(ctx, nil, st, uid, country, ts, entry)
    end
  end
end

-- Is the device identity agent ('#<hash>') new to the account: not in its profile (agent:<hash>,
-- folded in when a session closes) nor in another of its open sessions?  One HEXISTS unless the
-- profile is loaded in this call already; a profile key that cannot be read (not a hash) says no.
local function new_agent(ctx, uid, st, se, agent)
  for _, other in ipairs(st.sessions) do
    if other ~= se and other.dv[agent] then return false end
  end
  local field = 'agent:' .. agent:sub(2)
  local pr = ctx.profiles[uid]
  if pr then return pr.f[field] == nil end
  return redis.pcall('HEXISTS', ctx.prefix .. KEY.profile .. uid, field) == 0
end

-- The IP rule hears of a user once per (FWD_US period, IP): on the user's first click of the period
-- from that IP (remembered in the user's state as st.fwd; the rule counts users, not clicks).
-- st.fwd = {latest period, its last IP[, IPs forwarded since that period began, when more than 1]}: a
-- user hopping over more than EXACT IPs (in that period or, out of order, older ones) is not forwarded further.
-- agent: the click's device identity ('#<hash>', or '' / nil).
local function click_ip(ctx, uid, st, ip, ts, se, flags, agent)
  -- the click's IPv4 /16 travels with the session as '@a.b' (with its devices, folded into the
  -- profile's net:<a.b> when it closes): a network the customer browsed from is theirs (takeover)
  local R = ctx.rules
  local net16 = R.ato and ip:match('^(%d+%.%d+)%.%d+%.%d+$')
  if net16 then first_capped(ctx, se.dv, '@' .. net16, ts - se.s, MAX_VALUES) end   -- (an offset: start_at)
  -- a failed login: to the partitions of its IP, of its device identity and of its IPv4 /24
  -- (credential stuffing), once per session: a user's failed logins from a thousand IPs or agents
  -- are at most three forwarded records a session, not a thousand (the session's first failed
  -- login speaks for it)
  local R = ctx.rules
  if (R.stuff_h or R.stuff_dev_h or R.stuff_net_h) and math.floor(flags / 2) % 2 == 1 and not se.lf then
    se.lf = ip
    if R.stuff_h then forward(ctx, {'login', ip, uid, fmt(ts)}) end
    -- A device identity or a /24 is shared by many honest customers (a browser build, a carrier's
    -- range): there, only failed logins from a device identity new to the account count (a stuffer's
    -- machine is new to every account it tries; a customer mistypes on the device they use).
    if (R.stuff_dev_h or R.stuff_net_h) and agent and #agent > 1 and new_agent(ctx, uid, st, se, agent) then
      if R.stuff_dev_h then forward(ctx, {'login_dev', agent:sub(2), uid, fmt(ts)}) end
      local net = R.stuff_net_h and ip:match('^(%d+%.%d+%.%d+)%.%d+$')
      if net and not in_ranges(ip, R.shared_ips) then forward(ctx, {'login_net', net, uid, fmt(ts)}) end
    end
  end
  if not R.ip_h then return end
  local w = math.floor(ts / FWD_US) * FWD_US
  local last = st.fwd
  if last and last[1] == w and last[2] == ip then return end
  if last and w <= last[1] then
    local n = (last[3] or 1) + 1
    st.fwd = w == last[1] and {w, ip, n} or {last[1], last[2], n}
    if n > EXACT then return end
  else
    st.fwd = {w, ip}
  end
  forward(ctx, {'ip', ip, uid, fmt(ts)})
end

-- The members of ZSET key (member -> time) within `range` of t: the raw ZRANGEBYSCORE ... WITHSCORES
-- reply (at most EXACT members), or nil when the key holds fewer than `least` members (most IPs
-- and users: one or two, and no window can reach a threshold: one ZCARD instead of a read).
local function near(key, t, range, least)
  if rcall('ZCARD', key) < least then return nil end
  return rcall('ZRANGEBYSCORE', key, fmt(t - range), fmt(t + range), 'WITHSCORES')
end

-- In raw (near()), the densest window of length w that contains t: the number of members in it and
-- {{member, time}, ...}.  Order-independent: the same members give the same answer, whatever came
-- first.
local function densest_members(raw, t, w)
  local best, bi, bj, j = 0, 1, 0, 1
  local n = #raw / 2
  for i = 1, n do
    local ti = tonumber(raw[2 * i])
    if ti > t then break end
    if t - ti <= w then
      if j < i then j = i end
      while j <= n and tonumber(raw[2 * j]) - ti <= w do j = j + 1 end
      if tonumber(raw[2 * (j - 1)]) >= t and j - i > best then best, bi, bj = j - i, i, j - 1 end
    end
  end
  -- the window that starts at t (its member may have been capped away, or recorded later)
  local first, count = nil, 0
  for k = 1, n do
    local tk = tonumber(raw[2 * k])
    if tk >= t and tk - t <= w then
      first = first or k
      count = count + 1
    end
  end
  if count > best then best, bi, bj = count, first, first + count - 1 end
  local members = {}
  for k = bi, bj do members[#members + 1] = {raw[2 * k - 1], tonumber(raw[2 * k])} end
  return best, members
end

local function least(horizons)
  local n
  for _, h in ipairs(horizons) do if not n or h[2] < n then n = h[2] end end
  return n or 1
end

-- Failed payments over several horizons: the largest group of the user's failures inside some
-- window of the horizon's length that contains the new one (exact and order-independent: the
-- failures in a ZSET, the latest FAILS kept).  Signals raised on fewer than fail_recover failures
-- are 'declines' (a completed payment within the hour retracts them: honest declines); more are
-- 'failed_payments'.
local function declines(ctx, pr, uid, ts, tx, entry)
  local R = ctx.rules
  local key, keep = ctx.prefix .. KEY.fails .. uid, longest(R.fail_h)
  rcall('ZADD', key, ts, tx.fp)
  rcall('ZREMRANGEBYSCORE', key, '-inf', '(' .. fmt(ts - 2 * keep))
  rcall('ZREMRANGEBYRANK', key, 0, -(FAILS + 1))   -- the latest failures only
  rcall('PEXPIRE', key, math.floor(2 * keep / 1000) + 1)
  local raw = rcall('ZRANGEBYSCORE', key, fmt(ts - keep), fmt(ts + keep), 'WITHSCORES')
  for _, h in ipairs(R.fail_h) do
    local n = densest_members(raw, ts, h[1])
    if n >= h[2] then
      user_alert(ctx, pr, {rule = 'failed_payments', sev = R.fail_sev, uid = uid,
        window = math.floor(ts / h[1]) * h[1], mark = h[1], count = n, threshold = h[2], entry = entry,
        evidence = {window_minutes = h[1] / US_PER_MIN}}, ts, h[3],
        n < R.fail_recover and 'declines' or 'failed_payments')
    end
  end
end

-- Distinct cards of the user over several horizons; a card is forwarded to its partition (users
-- per card) when new to the user or not forwarded for FWD_US.
local function cards(ctx, pr, uid, ts, tx, entry)
  local R = ctx.rules
  local key = ctx.prefix .. KEY.ucards .. uid
  local keep = math.max(R.cards_h and longest(R.cards_h) or 0, DAY_US)
  local prev, capped = track(key, tx.card, ts, keep, math.floor((keep + ctx.gap) / 1000))
  -- (near(), with its ZCARD kept for the card-ring rule below)
  local size = (R.cards_h or (R.ring_h and not prev and not capped)) and rcall('ZCARD', key)
  local raw = R.cards_h and size >= least(R.cards_h) and rcall('ZRANGEBYSCORE', key, fmt(ts - keep), fmt(ts + keep), 'WITHSCORES')
  for _, h in ipairs(raw and R.cards_h or {}) do
    local n, members = densest_members(raw, ts, h[1])
    if n >= h[2] then
      local seen = {}
      for i, m in ipairs(members) do seen[i] = m[1] end
      table.sort(seen)
      user_alert(ctx, pr, {rule = 'card_testing', sev = R.card_sev, uid = uid, window = math.floor(ts / h[1]) * h[1],
        mark = h[1], count = n, threshold = h[2], entry = entry,
        evidence = {cards = seen, window_minutes = h[1] / US_PER_MIN}}, ts, h[3])
    end
  end
  -- (beyond EXACT cards lately the user has alerted as a card tester: no more forwarding)
  if R.cardu_h and not capped and (not prev or ts - prev >= FWD_US) then
    forward(ctx, {'card', tx.card, uid, fmt(ts), tx.ip:match('^(%d+%.%d+%.%d+)%.%d+$') or tx.ip})
  end
  -- a card ring: a card new to a user who now has ring_cards or more (within the longest card
  -- horizon, at least 24 h) tells the IPv4 /24 it was paid from; once per new card, so at most EXACT
  -- records a user a day whatever the IPs (not from a listed shared range)
  if R.ring_h and not prev and not capped then
    local net = tx.ip:match('^(%d+%.%d+%.%d+)%.%d+$')
    if net and not in_ranges(tx.ip, R.shared_ips) and size >= R.ring_cards then
      forward(ctx, {'ring', net, uid, fmt(ts)})
    end
  end
end

-- The completed orders the takeover rule remembers (profile field last_order): "<time> <fingerprint>
-- <amount> <ip> <older>", older = "<time>:<fingerprint>:<amount>:<stored>,..." the other orders of
-- the recent hours before the latest (at most ORDERS in all; stored = 1: paid from a stored balance).
-- Every remembered order is in the profile's totals (orders, spend_minor): they are written together.
local ORDERS = 8
local function remembered(pr)
  local t, fp, amount, ip, older, st = (pr.f.last_order or ''):match('^(%d+) (%d+) (%d+) ?(%S*) ?(%S*) ?(%d?)$')
  if not t then return {} end
  local out = {{tonumber(t), tonumber(fp), tonumber(amount), ip, st == '1'}}
  for at, f, a, s in string.gmatch(older, '(%d+):(%d+):(%d+):(%d)') do
    out[#out + 1] = {tonumber(at), tonumber(f), tonumber(a), nil, s == '1'}
  end
  return out
end

local function remember_order(pr, ts, tx, recent, stored)
  local list = remembered(pr)
  list[#list + 1] = {ts, tx.fp, tx.amount, tx.ip, stored}
  table.sort(list, function(a, b) return a[1] > b[1] end)
  local head, older = list[1], {}
  for i = 2, math.min(#list, ORDERS) do
    local o = list[i]
    if head[1] - o[1] < recent then older[#older + 1] = fmt(o[1]) .. ':' .. fmt(o[2]) .. ':' .. o[3] .. ':' .. (o[5] and 1 or 0) end
  end
  pset(pr, 'last_order', fmt(head[1]) .. ' ' .. fmt(head[2]) .. ' ' .. head[3] .. ' ' .. (head[4] or '') .. ' '
    .. table.concat(older, ',') .. ' ' .. (head[5] and 1 or 0))
end

-- Account takeover, on a completed payment of an account with history: what changed lately (a new
-- device, a new place, account details by a support ticket) and how much was spent lately
-- against the customer's average order.  No change, no signal (a big order alone is a good
-- customer); its points are the sum of what is there, raised at most once a day (a later order
-- that adds to them raises the difference).  A later ticket or session may score an order again.
--   A place is one move: a new country or, in the same country, a new IPv4 /16 (a new country
-- brings a new network: not counted twice).  The payment's own country and network count at once
-- (they are noted in the profile after the rules).  A payment from a network the account has used
-- before the recent hours (paid or browsed from), in a country it knows, is the customer at home:
-- a new device there is the household's new phone or laptop, an account change their forgotten
-- password or their move, not a taker's (a taker pays from elsewhere): neither counts.  A new device AND a new country together leave
-- nothing of the customer's usual context (the classic takeover: each alone is a new phone or a
-- trip): the device_and_country points.  The average order is the one before the recent hours:
-- the recent orders are what is measured, so a cash-out split over several orders does not raise
-- its own yardstick.  Spending a stored balance (loyalty points, store credit: money nobody watches,
-- instantly redeemed) is the monetization a taker looks for, like a high value.
local function takeover(ctx, pr, st, uid, ts, tx, entry)
  local R = ctx.rules
  local A = R.ato
  local P = R.pts
  local first = first_of(pr, 'first_seen')
  if not first or ts - first < A.hist then return end
  local since = ts - A.recent
  local seen = {}
  for field in pairs(pr.f) do seen[field] = true end
  for field in pairs(pr.first) do seen[field] = true end
  -- a value of kind first seen lately (or brought by this payment: current), while an older one
  -- exists; and whether current is an older one (familiar)
  local function fresh(kind, current)
    local new, old = nil, false
    for field in pairs(seen) do
      if field:sub(1, #kind + 1) == kind .. ':' then
        local t = first_of(pr, field)
        if t and t > since and t <= ts then new = field:sub(#kind + 2) elseif t and t <= since then old = true end
      end
    end
    local familiar = false
    if current and current ~= '' then
      local t = first_of(pr, kind .. ':' .. current)
      if not t or t > ts then new = new or current elseif t <= since then familiar = true end
    end
    return old and new or nil, familiar
  end
  local device = fresh('agent')
  local country = fresh('country', tx.country)
  local network, home = fresh('net', tx.ip and tx.ip:match('^(%d+%.%d+)%.%d+%.%d+$'))
  local kinds, changed = {}, 0
  for kind, at in string.gmatch(pr.f.changes or '', '([^@,]+)@(%d+)') do
    at = tonumber(at)
    if at > since and at <= ts and not kinds[kind] then kinds[kind] = true; changed = changed + 1 end
  end
  if home and not country then          -- at home: the customer's new phone, forgotten password, move
    device, changed = nil, 0
  end
  local travelled = false              -- an impossible-travel signal lately
  for _, r in ipairs(reasons_of(pr)) do
    if r[1] == 'impossible_travel' and r[3] > since and r[3] <= ts then travelled = true end
  end
  if not (device or country or changed > 0 or travelled) then return end   -- (a new network alone: no)
  -- spend of the last `recent` (this payment included) against the average order before them; the
  -- remembered orders are in the totals, this payment is not unless it is remembered (scored again)
  local spent, n, prior, prior_sum, listed, stored = 0, 0, 0, 0, false, tx.stored
  for _, o in ipairs(remembered(pr)) do
    if o[1] > since and o[1] <= ts then
      spent, n, prior, prior_sum = spent + o[3], n + 1, prior + 1, prior_sum + o[3]
      if o[1] == ts and o[2] == tx.fp then listed = true end
      stored = stored or o[5]
    end
  end
  if not listed then spent, n = spent + tx.amount, n + 1 end
  -- (a customer who never paid before has no average: a first order of A.min or more is high)
  local orders = (tonumber(pr.f.orders) or 0) - prior
  local average = orders > 0 and math.max(0, (tonumber(pr.f.spend_minor) or 0) - prior_sum) / orders
    or A.min / A.ratio
  local high = spent >= A.min and spent >= A.ratio * average
  local burst = n >= 3                 -- three orders or more in the recent hours: split cash-out
  local pts = (device and P.new_device or 0) + (country and P.new_country or (network and not device and P.new_network or 0))
    + (device and country and P.device_and_country or 0)
    + (changed > 0 and P.account_change or 0) + (changed > 1 and P.more_changes or 0) + (high and P.high_value or 0)
    + (burst and P.order_burst or 0) + (stored and P.stored_value or 0)
    + (travelled and P.new_country or 0)
  local day = math.floor(ts / DAY_US)
  local d, before = (pr.f.ato or ''):match('^(%d+) (%S+)$')
  before = tonumber(d) == day and tonumber(before) or 0
  if pts <= before then return end
  pset(pr, 'ato', day .. ' ' .. pts)
  user_alert(ctx, pr, {rule = 'account_takeover', sev = R.ato_sev, uid = uid, window = day * DAY_US, mark = pts,
    count = math.floor(spent), threshold = math.floor(A.ratio * average), entry = entry,
    evidence = {new_device = device and true or false, new_country = country or false,
                new_network = network or false, familiar_network = home, account_changes = changed,
                impossible_travel = travelled, high_value = high, order_burst = burst, orders_recent = n, stored_value = stored or false,
                spent_minor = spent, average_order_minor = math.floor(average), points = pts}},
    ts, pts)
end

-- A session closes (exact: every event of the session is in): its click fields go into the
-- profile (an unreadable profile key is left as it is); an inhuman-speed signal the whole session
-- refutes (an earlier first click, a product view, an intent entry that arrived out of order) is
-- retracted.  The latest order, when the session began before it within the takeover's recent
-- hours, is scored again with what the whole session showed (its clicks may have been applied
-- after the payment: another stream, other delays; the day's points only ever rise).
local function session_rules(ctx, uid, se)
  local pr = load_profile(ctx, uid)
  if not pr then return end
  pincr(pr, 'sessions', 1)
  fold_session(pr, se)
  local last, lt = nil, nil
  for c, t in pairs(se.co) do if not lt or t > lt then last, lt = c, t end end
  if last then
    local stored = pr.f.loc and tonumber(pr.f.loc:match(' (%d+)$'))
    if not stored or se.l >= stored then pset(pr, 'loc', last .. ' ' .. fmt(se.l)) end
  end
  if se.fl and speed_points(ctx.rules, se) == 0 then retract(ctx, pr, uid, 'inhuman_speed', se.s, se.l, se.l, '') end
  local A = ctx.rules.ato
  if A then
    local o = remembered(pr)[1]
    if o and se.s <= o[1] and o[1] - se.s < A.recent then
      takeover(ctx, pr, nil, uid, o[1], {fp = o[2], amount = o[3], ip = o[4]}, '')
    end
  end
end

-- Transactions of the user (before the transaction updates the profile).
local function tx_rules(ctx, pr, st, uid, ts, tx, entry)
  local R = ctx.rules
  if (tx.card ~= '' and R.block_cards[tx.card]) or (tx.ip ~= '' and in_ranges(tx.ip, R.block_ips)) then
    user_alert(ctx, pr, {rule = 'blocklist', sev = 'high', uid = uid, window = math.floor(ts / DAY_US) * DAY_US,
      count = 1, threshold = 1, entry = entry, evidence = {card = tx.card, ip = tx.ip}}, ts, R.pts.blocklist)
  end
  if tx.completed then
    if R.ato then
      tx.stored = R.ato.stored and R.ato.stored[tx.method] or false
      takeover(ctx, pr, st, uid, ts, tx, entry)
      remember_order(pr, ts, tx, R.ato.recent, tx.stored)
    end
    retract(ctx, pr, uid, 'declines', ts - HOUR_US, ts, ts, entry)      -- it was an honest customer
    if WALLETS[tx.method] and st then                                   -- an express checkout
      for _, se in ipairs(st.sessions) do
        if se.fl and math.abs(se.fl - ts) < 10 * US_PER_MIN then
          retract(ctx, pr, uid, 'inhuman_speed', se.s, se.l, ts, entry)
          se.i = true
          st.clean = false
        end
      end
    end
  elseif R.fail_h then
    declines(ctx, pr, uid, ts, tx, entry)
  end
  if tx.card ~= '' and (R.cards_h or R.cardu_h) then cards(ctx, pr, uid, ts, tx, entry) end
  if tx.country ~= '' then travel(ctx, pr, st, uid, tx.country, ts, entry) end
  local net = tx.ip:match('^(%d+%.%d+)%.%d+%.%d+$')
  if net and admit(pr, 'net', 'net:' .. net) then first_time(pr, 'net:' .. net, ts) end
  if tx.ip ~= '' and R.ip_h then
    -- the same for the user's IPs in payments: each forwarded once a period, the first EXACT only
    local wk = fmt(math.floor(ts / FWD_US) * FWD_US)
    local key, more = ctx.prefix .. KEY.uips .. wk .. ':' .. uid, ctx.prefix .. KEY.uips_more .. wk .. ':' .. uid
    local ttl = math.floor((FWD_US + ctx.gap + ctx.ooo) / 1000)     -- past every click that is not late
    local n, exact = count_distinct(key, more, tx.ip, ttl)
    if n and (n == 1 or not exact) then owns(ctx, uid, exact and key or more, ttl) end
    if exact then forward(ctx, {'ip', tx.ip, uid, fmt(ts)}) end
  end
end

-- Support tickets: account changes (for account takeover) and refund abuse; new = first snapshot.
local function ticket_rules(ctx, pr, uid, ts, category, new, entry)
  local R = ctx.rules
  if category == '' then return end
  if R.ato and R.ato.changes[category] then
    local at = ptime(pr, 'changed_at')
    if not at or ts > at then set_ptime(pr, 'changed_at', ts) end
    local list = {}                      -- the latest 8 account changes, "kind@time"
    for item in string.gmatch(pr.f.changes or '', '[^,]+') do list[#list + 1] = item end
    list[#list + 1] = category .. '@' .. fmt(ts)
    while #list > 8 do table.remove(list, 1) end
    pset(pr, 'changes', table.concat(list, ','))
    -- a ticket that arrives after the order it preceded (another system, other delays): score again
    local o = remembered(pr)[1]
    local t = o and o[1]
    if t and t >= ts and t - ts < R.ato.recent then
      takeover(ctx, pr, nil, uid, t, {fp = o[2], amount = o[3], ip = o[4]}, entry)
    end
    -- the delivery address changed within hours after an order: the goods go somewhere else
    -- (reshipping mules, triangulation, a taker redirecting the owner's order)
    local A = R.redirect
    if new and A and A.cats[category] and t and t <= ts and ts - t < A.within then
      user_alert(ctx, pr, {rule = 'address_after_order', sev = R.redirect_sev, uid = uid,
        window = math.floor(ts / DAY_US) * DAY_US, count = math.floor((ts - t) / US_PER_MIN),
        threshold = math.floor(A.within / US_PER_MIN), entry = entry,
        evidence = {order_ms = ms(t), minutes_after_order = math.floor((ts - t) / US_PER_MIN)}},
        ts, R.pts.address_after_order)
    end
  end
  if new and R.refund_cats[category] then
    pincr(pr, 'refund_tickets', 1)
    local n, orders = tonumber(pr.f.refund_tickets), tonumber(pr.f.orders) or 0
    if R.refund and n >= R.refund[1] and n >= R.refund[2] * orders then
      user_alert(ctx, pr, {rule = 'refund_abuse', sev = R.refund_sev, uid = uid, window = 0, mark = n,
        count = n, threshold = R.refund[1], entry = entry, evidence = {refund_tickets = n, orders = orders}},
        ts, R.pts.refund_abuse)
    end
  end
end

-- The risk of subject alert a for user uid, dated the user's own time with the subject (their
-- latest time in its ZSET: not the time of the record that tipped the subject over, which depends
-- on the arrival order across partitions).
local function risk_back(ctx, uid, a, at)
  forward(ctx, {'risk', uid, a.rule, a.sev, fmt(at), a.kind, a.subject, fmt(a.window), a.count, a.threshold,
                a.points})
end

-- A subject alert names no user (which one tipped it over, and who came first, depend on the
-- arrival order of forwarded records): user_id '', count = the first count that satisfies the
-- rule, no entry.  The first time, every user involved gets a risk record; later, each new user.
-- Each risk record writes a member record in the user's partition (apply_forwarded): the link.
local function subject_alert(ctx, a, members, uid, ts)
  a.uid, a.entry = '', ''
  a.evidence = {window_minutes = a.window_us / US_PER_MIN}
  if emit(ctx, a) then
    for _, m in ipairs(members) do risk_back(ctx, m[1], a, m[2]) end
  else
    risk_back(ctx, uid, a, ts)
  end
end

-- The link between a subject alert and one of its users, in the user's partition: the alert's
-- rule, subject, window, count and threshold with user_id = the user (evidence.role = 'member').
local function member_record(ctx, uid, rec)
  emit_record(ctx, {rule = rec[3], sev = rec[4], kind = rec[6], subject = rec[7], uid = uid,
    window = tonumber(rec[8]), count = tonumber(rec[9]) or '', threshold = tonumber(rec[10]) or '', entry = ''},
    {role = 'member'})
end

-- Users of a subject (an IP, a card) over several horizons, in the subject's partition: ZSET user ->
-- latest time, the latest EXACT users.
-- nets: a ZSET of the networks (/24) the subject was used from, or nil; with it, a subject used from
-- one network only (a household's card) does not alert.
local function subject_users(ctx, a, key, uid, ts, horizons, nets, net)
  local keep = longest(horizons)
  local ttl = math.floor((keep + ctx.gap + ctx.ooo) / 1000)
  local prev, capped = track(key, uid, ts, keep, ttl)
  if not prev and not capped then joins(ctx, uid, key, ttl) end
  if nets and net and net ~= '' then track(nets, net, ts, keep, ttl) end
  local raw = near(key, ts, keep, least(horizons))
  for _, h in ipairs(raw and horizons or {}) do
    local n, members = densest_members(raw, ts, h[1])
    if n >= h[2] and nets and n <= ctx.rules.household
        and rcall('ZCOUNT', nets, fmt(ts - h[1]), fmt(ts + h[1])) < 2 then
      n = 0                              -- a household: a few users paying from one network
    end
    if n >= h[2] then
      a.window, a.window_us, a.mark, a.count, a.threshold, a.points =
        math.floor(ts / h[1]) * h[1], h[1], h[1], h[2], h[2], h[3]
      subject_alert(ctx, a, members, uid, ts)
    end
  end
end

-- Records forwarded from other partitions (this partition owns the subject).
local function apply_forwarded(ctx, rec, entry)
  local R, kind = ctx.rules, rec[1]
  if kind == 'ip' and R.ip_h then
    local ip, uid, ts = rec[2], rec[3], tonumber(rec[4])
    if in_ranges(ip, R.shared_ips) then return end        -- a known shared range: not evidence
    subject_users(ctx, {rule = 'ip_users', sev = R.ip_sev, kind = 'ip', subject = ip},
      ctx.prefix .. KEY.ip_users .. ip, uid, ts, R.ip_h)
  elseif kind == 'login' and R.stuff_h then
    local ip, uid, ts = rec[2], rec[3], tonumber(rec[4])
    if in_ranges(ip, R.shared_ips) then return end
    subject_users(ctx, {rule = 'credential_stuffing', sev = R.stuff_sev, kind = 'ip', subject = ip},
      ctx.prefix .. KEY.login_ip .. ip, uid, ts, R.stuff_h)
  elseif kind == 'login_dev' and R.stuff_dev_h then    -- (the agent hash: 8 hex digits, engine/schema.py)
    local agent, uid, ts = rec[2], rec[3], tonumber(rec[4])
    subject_users(ctx, {rule = 'credential_stuffing', sev = R.stuff_sev, kind = 'device', subject = agent},
      ctx.prefix .. KEY.login_dev .. agent, uid, ts, R.stuff_dev_h)
  elseif kind == 'login_net' and R.stuff_net_h then    -- (a shared range was left out in the user's partition)
    local net, uid, ts = rec[2], rec[3], tonumber(rec[4])
    subject_users(ctx, {rule = 'credential_stuffing', sev = R.stuff_sev, kind = 'net', subject = net .. '.0/24'},
      ctx.prefix .. KEY.login_net .. net, uid, ts, R.stuff_net_h)
  elseif kind == 'ring' and R.ring_h then
    local net, uid, ts = rec[2], rec[3], tonumber(rec[4])
    subject_users(ctx, {rule = 'card_ring', sev = R.ring_sev, kind = 'net', subject = net .. '.0/24'},
      ctx.prefix .. KEY.ring_net .. net, uid, ts, R.ring_h)
  elseif kind == 'card' and R.cardu_h then
    local card, uid, ts = rec[2], rec[3], tonumber(rec[4])
    subject_users(ctx, {rule = 'card_testing', sev = R.card_sev, kind = 'card', subject = card},
      ctx.prefix .. KEY.card_users .. card, uid, ts, R.cardu_h, ctx.prefix .. KEY.card_nets .. card, rec[5])
  elseif kind == 'risk' then
    local uid = rec[2]
    if ctx.check_tombs and erased(ctx, uid) then return end
    -- risk:<rule>:<window>:<kind>:<#subject>:<subject>:<user>: the subject's length keeps the
    -- (subject, user) split unambiguous whatever ':' either contains
    local subject = rec[7]
    local marker = ctx.prefix .. KEY.risk .. rec[3] .. ':' .. rec[8] .. ':' .. rec[6] .. ':' .. #subject .. ':'
      .. subject .. ':' .. uid
    if not rcall('SET', marker, 1, 'NX', 'PX', ctx.ttl) then return end
    owns(ctx, uid, marker, tonumber(ctx.ttl))
    member_record(ctx, uid, rec)
    local pr = load_profile(ctx, uid)
    if pr then
      local points, ts = tonumber(rec[11]) or 0, tonumber(rec[5])
      if points > 0 then new_account(ctx, pr, uid, ts, '') end
      add_signal(ctx, pr, uid, rec[3], points, ts, '')
    end
  end
end
