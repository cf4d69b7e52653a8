--[[ rules: the fraud rules, evaluated inside the apply script together with the state they read.
  Included after partition_state, user_state, profile and alerts (emit, forward, the caps).
  ctx.rules = the decoded rules argument (engine/rules.py Rules.to_lua; a threshold of false
  disables its rule).  docs/rules.md says what
  each rule means; the functions below are called by apply_batch.lua / advance_watermark.lua.
  How alerts are emitted, rekeyed to a subject's partition, capped and indexed for erasure:
  alerts.lua.
]]
-- Clicks: events_per_minute (the brief's rule) and burst (sliding 60 s, two-bucket estimate:
-- this minute's count + the previous minute's count x the part of it still inside the window).
local function click_rules(ctx, uid, st, m, c, ts, entry)
  local R = ctx.rules
  if R.epm and c > R.epm then          -- not == epm + 1: a threshold lowered mid-minute (emit dedups)
    user_alert(ctx, nil, {rule = 'events_per_minute', sev = R.epm_sev, uid = uid, window = m * US_PER_MIN,
      count = c, threshold = R.epm, entry = entry}, ts)
  end
  if R.burst then
    local prev = st.minutes[m - 1] or 0
    local est = c + prev * (1 - (ts - m * US_PER_MIN) / US_PER_MIN)
    if est > R.burst then
      user_alert(ctx, nil, {rule = 'burst', sev = R.burst_sev, uid = uid, window = m * US_PER_MIN,
        count = math.floor(est), threshold = R.burst, entry = entry,
        evidence = {window_end_ms = ms(ts), this_minute = c, previous_minute = prev}}, ts)
    end
  end
end

-- The IP rule hears of a user once per (window, IP): on the user's first click of the window
-- from that IP (remembered in the user's state as st.fwd; the rule counts users, not clicks).
-- st.fwd = {latest window, its last IP[, IPs forwarded since that window began, when more than 1]}: a user hopping
-- over more than EXACT IPs (in that window or, out of order, older ones) is not forwarded further.
local function click_ip(ctx, uid, st, ip, ts)
  local R = ctx.rules
  if not R.ip_n then return end
  local w = math.floor(ts / R.ip_w) * R.ip_w     -- the window's start (stays right if the window changes)
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

-- A session closes (exact: every event of the session is in): its click fields go into the
-- profile (an unreadable profile key is left as it is), then the session rule inhuman_speed.
local function session_rules(ctx, uid, se)
  local R = ctx.rules
  local pr = load_profile(ctx, uid)
  if pr then
    pincr(pr, 'sessions', 1)
    fold_session(pr, se)
  end
  local views, carts = se.t.product_view or 0, se.t.add_to_cart or 0
  if R.speed_us and se.p and se.p - se.s < R.speed_us then
    user_alert(ctx, pr, {rule = 'inhuman_speed', sev = R.speed_sev, uid = uid, window = se.s,
      count = math.floor((se.p - se.s) / 1000), threshold = math.floor(R.speed_us / 1000), entry = '',
      evidence = {reason = 'purchase_after_ms', session_start_ms = ms(se.s), events = se.n,
                  product_views = views}}, se.l)
  elseif R.speed_noview and (se.t.checkout or 0) > 0 and views + carts == 0 then
    user_alert(ctx, pr, {rule = 'inhuman_speed', sev = R.speed_sev, uid = uid, window = se.s,
      count = 0, threshold = 1, entry = '',
      evidence = {reason = 'checkout_without_product', session_start_ms = ms(se.s), events = se.n,
                  checkouts = se.t.checkout}}, se.l)
  end
end

-- Transactions of the user (before the transaction updates the profile).
local function tx_rules(ctx, pr, uid, ts, tx, entry)
  local R = ctx.rules
  if tx.completed and R.ncp_min and tx.amount >= R.ncp_min and tx.country ~= '' then
    local first = first_of(pr, 'first_seen')
    local since = first_of(pr, 'country:' .. tx.country)
    if first and ts - first > R.ncp_hist and (not since or ts - since < R.ncp_new) then
      user_alert(ctx, pr, {rule = 'new_country_purchase', sev = R.ncp_sev, uid = uid, window = since or ts,
        count = tx.amount, threshold = R.ncp_min, entry = entry,
        evidence = {country = tx.country, amount_minor = tx.amount, currency = tx.currency,
                    country_first_seen_ms = ms(since or ts), customer_since_ms = ms(first)}}, ts)
    end
  end
  if not tx.completed and R.fail_n then
    local key, w = ctx.prefix .. KEY.fails .. uid, R.fail_w
    rcall('ZADD', key, ts, tx.fp)
    rcall('ZREMRANGEBYSCORE', key, '-inf', '(' .. fmt(ts - 2 * w))
    rcall('ZREMRANGEBYRANK', key, 0, -(math.max(R.fail_n, FAILS) + 1))   -- the latest failures only
    rcall('PEXPIRE', key, math.floor(2 * w / 1000) + 1)
    -- the largest group of failures inside some window of length w that contains this one
    local near = rcall('ZRANGEBYSCORE', key, fmt(ts - w), fmt(ts + w), 'WITHSCORES')
    local times = {}
    for i = 2, #near, 2 do times[#times + 1] = tonumber(near[i]) end
    local best, best_start, j = 0, ts, 1
    for i = 1, #times do
      if times[i] > ts then break end
      while j <= #times and times[j] - times[i] <= w do j = j + 1 end
      if times[j - 1] >= ts and j - i > best then best, best_start = j - i, times[i] end
    end
    if best >= R.fail_n then
      user_alert(ctx, pr, {rule = 'failed_payments', sev = R.fail_sev, uid = uid,
        window = math.floor(ts / w) * w, count = best, threshold = R.fail_n, entry = entry,
        evidence = {first_failure_ms = ms(best_start), window_minutes = w / US_PER_MIN}}, ts)
    end
  end
  if tx.card ~= '' and (R.cards_n or R.cardu_n) then
    -- the user's distinct cards of the window (both rules): a card is forwarded to its partition
    -- once, and only the user's first EXACT cards (more: the user's own alert has fired)
    local w = R.card_w
    local wk = math.floor(ts / w) * w
    local key, more = ctx.prefix .. KEY.ucards .. fmt(wk) .. ':' .. uid, ctx.prefix .. KEY.ucards_more .. fmt(wk) .. ':' .. uid
    local ttl = math.floor((w + ctx.gap) / 1000)
    local n, exact = count_distinct(key, more, tx.card, ttl)
    if n and (n == 1 or not exact) then owns(ctx, uid, exact and key or more, ttl) end   -- created (SADD: idempotent)
    if n and R.cards_n and n >= R.cards_n then
      user_alert(ctx, pr, {rule = 'card_testing', sev = R.card_sev, uid = uid, window = wk, count = n,
        threshold = R.cards_n, entry = entry, evidence = {cards = sorted_members(key)}}, ts)
    end
    if exact and R.cardu_n then forward(ctx, {'card', tx.card, uid, fmt(ts)}) end
  end
  if tx.ip ~= '' and R.ip_n then
    -- the same for the user's IPs in payments: each forwarded once a window, the first EXACT only
    local wk = fmt(math.floor(ts / R.ip_w) * R.ip_w)
    local key, more = ctx.prefix .. KEY.uips .. wk .. ':' .. uid, ctx.prefix .. KEY.uips_more .. wk .. ':' .. uid
    local n, exact = count_distinct(key, more, tx.ip, ctx.ip_ttl)
    if n and (n == 1 or not exact) then owns(ctx, uid, exact and key or more, ctx.ip_ttl) end
    if exact then forward(ctx, {'ip', tx.ip, uid, fmt(ts)}) end
  end
end

-- The risk of subject alert a for user uid, dated the window's start (not the time of the record
-- that tipped the subject over: that one depends on the arrival order across partitions).
local function risk_back(ctx, uid, a)
  forward(ctx, {'risk', uid, a.rule, a.sev, fmt(a.window), a.kind, a.subject, fmt(a.window), a.count, a.threshold})
end

-- A subject alert names no user (which one tipped it over, and who came first, depend on the
-- arrival order of forwarded records): user_id '', count = the first count that satisfies the
-- rule, no entry.  The first time, every user involved gets a risk record; later, each new user.
-- Each risk record writes a member record in the user's partition (apply_forwarded): the link.
local function subject_alert(ctx, a, members, uid)
  a.uid, a.entry = '', ''
  a.evidence = {window_minutes = a.window_us / US_PER_MIN}
  if emit(ctx, a) then
    for _, m in ipairs(members) do risk_back(ctx, m, a) end
  else
    risk_back(ctx, uid, a)
  end
end

-- The link between a subject alert and one of its users, in the user's partition: the alert's
-- rule, subject, window, count and threshold with user_id = the user (evidence.role = 'member').
local function member_record(ctx, uid, rec)
  local rule, sev, kind, subject, window = rec[3], rec[4], rec[6], rec[7], rec[8]
  local count, threshold = rec[9] or '', rec[10] or ''
  rcall('XADD', ctx.alerts, 'MAXLEN', '~', ctx.maxlen, '*', 'rule', rule, 'severity', sev, 'subject_kind', kind,
    'subject', subject, 'user_id', uid, 'window_start', window, 'count', count, 'threshold', threshold,
    'detected_at', fmt(ctx.now), 'entry_id', '', 'evidence', '{"role":"member"}')
  rcall('PUBLISH', ctx.channel, cjson.encode({rule = rule, severity = sev, subject_kind = kind, subject = subject,
    user_id = uid, window_start_ms = math.floor(tonumber(window) / 1000), count = tonumber(count),
    threshold = tonumber(threshold), detected_at_ms = math.floor(ctx.now / 1000), entry_id = '',
    evidence = {role = 'member'}}))
end

-- Records forwarded from other partitions (this partition owns the subject).
local function apply_forwarded(ctx, rec, entry)
  local R, kind = ctx.rules, rec[1]
  if kind == 'ip' and R.ip_n then
    -- the first EXACT users of the IP and window in a set, the others in a HyperLogLog: small
    -- keys for the usual one-user IP, bounded ones for a farm
    local ip, uid, ts = rec[2], rec[3], tonumber(rec[4])
    local wk = math.floor(ts / R.ip_w) * R.ip_w
    local suffix = fmt(wk) .. ':' .. ip
    local skey = ctx.prefix .. KEY.ip_users .. suffix
    local n, exact = count_distinct(skey, ctx.prefix .. KEY.ip_more .. suffix, uid, ctx.ip_ttl)
    if not n then return end
    if exact then joins(ctx, uid, skey, ctx.ip_ttl) end
    if n > R.ip_n then
      local members = rcall('SMEMBERS', skey)
      subject_alert(ctx, {rule = 'ip_users', sev = R.ip_sev, kind = 'ip', subject = ip, window = wk,
        window_us = R.ip_w, count = R.ip_n + 1, threshold = R.ip_n}, members, uid)
    end
  elseif kind == 'card' and R.cardu_n then
    local card, uid, ts = rec[2], rec[3], tonumber(rec[4])
    local wk = math.floor(ts / R.card_w) * R.card_w
    local suffix = fmt(wk) .. ':' .. card
    local key, ttl = ctx.prefix .. KEY.card_users .. suffix, math.floor((R.card_w + ctx.gap) / 1000)
    local n, exact = count_distinct(key, ctx.prefix .. KEY.card_more .. suffix, uid, ttl)
    if not n then return end
    if exact then joins(ctx, uid, key, ttl) end
    if n >= R.cardu_n then
      local members = rcall('SMEMBERS', key)
      subject_alert(ctx, {rule = 'card_testing', sev = R.card_sev, kind = 'card', subject = card, window = wk,
        window_us = R.card_w, count = R.cardu_n, threshold = R.cardu_n}, members, uid)
    end
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
    if pr then add_risk(ctx, pr, rec[4], tonumber(rec[5]), rec[3]) end
  end
end
