--[[ apply_batch: apply one partition's decoded input (clicks, transactions, support tickets,
  forwarded records) atomically, in stream order; evaluate the fraud rules; update profiles.
  KEYS[1]  ss:{p}:           PREFIX  derived here (same hash tag, same slot; suffixes: KEY, engine/keys.py):
                                     user:<id> STRING, profile:<id> HASH, tickets:<id> HASH, fails:<id> ZSET,
                                     ucz:<id> ZSET, uips:/uipx:<w>:<id> SET/HLL,
                                     cuz:<card> / cnz:<card> / ipz:<ip> / lgz:<ip> / lgdz:<agent> /
                                     lgnz:<a.b.c> / rngz:<a.b.c> ZSET (velocity),
                                     count:<m> STRING, hll:<m> HLL, fired:<rule>:<window>:<kind>:<subject>
                                     STRING, risk:<rule>:<w>:<kind>:<len>:<subject>:<id> STRING,
                                     ukeys:<id> / usets:<id> SET (erasure indexes), tomb:<id> STRING
  KEYS[2]  ss:{p}:clicks     STREAM  input (XACK target; XRANGE of a late entry's payload)
  KEYS[3]  ss:{p}:state      HASH    wm, max (the clock), top (its quorum users), tombs_until, applied,
                                     duplicates, late, erased, ahead, capped
  KEYS[4]  ss:{p}:open       ZSET    user -> due (earliest close time, lower bound)
  KEYS[5]  ss:{p}:mopen      ZSET    minutes not yet finalized
  KEYS[6]  ss:{p}:sessions   STREAM  closed sessions (out)
  KEYS[7]  ss:{p}:alerts     STREAM  alerts (out)
  KEYS[8]  ss:{p}:late       STREAM  late events (out)
  KEYS[9]  ss:{p}:minutes    STREAM  finalized minutes (out)
  KEYS[10] ss:{p}:lease      STRING  name of the owning consumer
  KEYS[11] ss:{p}:tx         STREAM  input: transactions (XACK target)
  KEYS[12] ss:{p}:support    STREAM  input: support tickets (XACK target)
  KEYS[13] ss:{p}:rekey      STREAM  input: records forwarded from other partitions (XACK, then XDEL)
  KEYS[14] ss:{p}:outbox     STREAM  records for other partitions (out; the consumer forwards them)
  KEYS[15] ss:{p}:profiles   STREAM  profile changelog (out): user_id, changes (JSON), ts (profile.lua)
  ARGV  consumer, group, now_us, gap_us, ooo_us, ttl_ms, maxlen, channel, profile_ttl_ms,
        rules (JSON, engine/rules.py), events (JSON array in stream-id order, engine/batch.py),
        quorum (users whose click times move the watermark), limit (users / minutes closed per call):
          [id, "c", user_id, ts_us, event_type, key, category, device, country, ip, '#' .. agent,
           flags (1 intent, 2 failed login, 4 automation agent: engine/schema.py flags_of)]
          [id, "t", user_id, ts_us, fingerprint, completed, amount_minor, currency, card, ip, country, method]
          [id, "k", user_id, ts_us, ticket_id, open, category]
          [id, "r", [record, ...] ]  (records: lua/includes/rules.lua)
        (fingerprint of the producer's event_id / transaction_id, 0 if none: a retried click is
        acknowledged and counted as a duplicate as long as it is not late, see partition_state.lua;
        a retried transaction, among the user's last 16)
  Returns {applied (clicks, transactions, tickets), duplicates, late, sessions_closed, minutes_finalized, watermark_us, erased,
           alerts {entry_id, rule, subject, window_start_us, ...}, poison {entry_id, reason, source, ...},
           outbox {entry_id, records JSON} or {} (the caller forwards the records and deletes the entry),
           more (1: more users or minutes are due than one call closes; call advance_watermark),
           ahead (clicks more than ooo ahead of the partition's clock), capped (values a cap dropped)}
  Poison: entries that cannot be applied because a key of their user cannot be read (clicks: the
  state; transactions and tickets: the profile; tickets: the tickets hash) are neither applied nor
  acknowledged; the caller moves them to the dead-letter stream.  A click's session reaches the
  profile when it closes; an unreadable profile then is left as it is (the session is emitted).
  Erased users (KEYS[1] tomb:<id>, looked up only while KEYS[3].tombs_until > now): their
  entries are acknowledged, deleted from their input stream and counted as erased, nothing else.
  Errors  SS_NOT_OWNER when KEYS[10] does not hold ARGV[1]; nothing is changed.
  Idempotent: yes - an entry is applied only if its XACK returned 1.
  (Over 300 lines with this header: the one atomic call per batch; its helpers live in includes/.)
  Semantics (DESIGN §3): the partition's clock is the quorum-th latest of its users' latest click
  times (one user's clock, however wrong, cannot move it: a click far ahead is applied to its
  user but moves nothing else; counted as `ahead`); watermark W = clock - ooo, never decreasing;
  a click is late when ts + gap < W (to KEYS[8], not applied); before a click touches a user, the
  user's state is settled at W (partition_state.lua settle_user), so results depend on stream
  order only, not on how entries were batched.  Transactions and tickets are applied whatever W
  (profile sums, rule windows of their own); they do not move W.  After a flush (W = end of time)
  no input is applied: every entry goes to KEYS[8] with the reason "input ended".
  Bounded: at most `limit` users and minutes are closed per call (more = 1 says there are more).
]]
--@include partition_state
--@include user_state
--@include profile
--@include alerts
--@include rules

local consumer, group = A.consumer, A.group
local now, gap, ooo = A.now_us, A.gap_us, A.ooo_us
local maxlen, profile_ttl = A.maxlen, A.profile_ttl_ms

if rcall('GET', K.lease) ~= consumer then
  return redis.error_reply('SS_NOT_OWNER ' .. K.lease .. ' is not held by ' .. consumer)
end

local ctx = new_ctx(K, gap, A.ttl_ms, maxlen)
extend_ctx(ctx, K, now, A.channel, A.rules, ooo)
ctx.on_close = session_rules
ctx.on_legacy = uncount_legacy
local wm, maxts, tombs_until = read_watermark(ctx)
ctx.quorum = A.quorum
ctx.check_tombs = tombs_until > now
local ended = wm >= END_OF_TIME
local applied, dups, late, dropped, ahead = 0, 0, 0, 0, 0
local poison = {}
local mcount, musers, mseen = {}, {}, {}
local streams = {c = K.clicks, t = K.tx, k = K.support, r = K.rekey}

local function reject(id, reason, src)    -- not acknowledged: the caller dead-letters it
  poison[#poison + 1] = pack_Poison({entry_id = id, reason = reason, source = src})
end

-- acknowledged now (1), a redelivery (0), or an erased user's entry (dropped here)
local function take(id, src, uid)
  local stream = streams[src]
  if rcall('XACK', stream, group, id) == 0 then
    dups = dups + 1
    return false
  end
  if ctx.check_tombs and erased(ctx, uid) then
    dropped = dropped + 1
    rcall('XDEL', stream, id)
    return false
  end
  return true
end

-- An acknowledged entry that is not applied: to the late stream with the reason and its payload.
local function to_late(id, src, uid, ts, reason)
  late = late + 1
  local entry = rcall('XRANGE', streams[src], id, id)[1]
  local payload = entry and entry[2][2] or ''
  rcall('XADD', ctx.late, 'MAXLEN', '~', maxlen, '*', 'entry_id', id, 'user_id', uid, 'ts', fmt(ts),
    'watermark', fmt(wm), 'reason', reason, 'payload', payload)
end

-- Returns nil when applied, or the reason it was not (a cap).
local function apply_click(ev, st)
  local id, uid, ts, etype, category, device, country, ip = ev[1], ev[3], ev[4], ev[5], ev[7], ev[8], ev[9], ev[10]
  settle_user(ctx, uid, st, wm)

  -- sessions: merge the event into every open session it is within gap of
  local hit, many = nil, false
  for _, se in ipairs(st.sessions) do
    if ts >= se.s - gap and ts <= se.l + gap then
      if hit then many = true else hit = se end
    end
  end
  if not hit and #st.sessions >= MAX_SESSIONS then
    return 'quarantined: the user has ' .. MAX_SESSIONS .. ' open sessions (the cap); this click would open one more'
  end
  if record_click(ctx, st, ev[6], ts) then
    dups = dups + 1                       -- a producer retry of a click applied already
    return nil
  end
  applied = applied + 1
  st.clean = false
  if ts > maxts or #ctx.top < ctx.quorum then
    local clock = note_clock(ctx, uid, ts)
    if clock and clock > maxts then
      maxts = clock
      if maxts - ooo > wm then wm = maxts - ooo end
    end
  end
  if maxts > NEG_INF and ts > maxts + ooo then ahead = ahead + 1 end   -- (no clock yet: nothing to be ahead of)
  if not hit then
    hit = new_session(ts)
    st.sessions[#st.sessions + 1] = hit
  elseif many then
    local merged, keep = new_session(ts), {}
    for _, se in ipairs(st.sessions) do
      if ts >= se.s - gap and ts <= se.l + gap then merge_session(ctx, merged, se) else keep[#keep + 1] = se end
    end
    keep[#keep + 1] = merged
    st.sessions = keep
    hit = merged
  end
  start_at(hit, ts)
  if ts > hit.l then
    if hit.n > 0 then                     -- an in-order gap (ms), for the scripted-clicks rule
      local gap_ms = (ts - hit.l) / 1000
      local g = hit.g
      if g then g[1], g[2], g[3] = g[1] + 1, g[2] + gap_ms, g[3] + gap_ms * gap_ms
      else hit.g = {1, gap_ms, gap_ms * gap_ms} end
    end
    hit.l = ts
  end
  hit.n = hit.n + 1
  count_capped(ctx, hit.t, etype, 1, MAX_TYPES)
  if etype == 'purchase' and (not hit.p or ts < hit.p) then hit.p = ts end
  -- what the profile learns from clicks travels with the session (folded in when it closes)
  local off = ts - hit.s                   -- devices' and countries' first times: offsets (start_at)
  if device ~= '' then first_capped(ctx, hit.dv, device, off, MAX_VALUES) end
  if ev[11] and ev[11] ~= '' then first_capped(ctx, hit.dv, ev[11], off, MAX_VALUES) end   -- '#<agent>'
  local flags = ev[12] or 0
  if flags % 2 == 1 then hit.i = true end
  if country ~= '' then first_capped(ctx, hit.co, country, off, MAX_VALUES) end
  if etype == 'product_view' and category ~= '' then count_capped(ctx, hit.c, category, 1, MAX_VALUES) end

  -- per-minute metrics, aggregated for the whole batch
  local m = math.floor(ts / US_PER_MIN)
  mcount[m] = (mcount[m] or 0) + 1
  local seen = mseen[m]
  if not seen then seen = {}; mseen[m] = seen; musers[m] = {} end
  if not seen[uid] then seen[uid] = true; local us = musers[m]; us[#us + 1] = uid end

  local c = minute_count(st, m)
  lower_due(ctx, st, m, hit.l)
  click_rules(ctx, uid, st, hit, m, c, ts, id, etype, country, flags)
  if ip ~= '' then click_ip(ctx, uid, st, ip, ts, hit, flags, ev[11]) end
  return nil
end

local function seen_tx(pr, fp)
  if fp == 0 then return false end
  local key, ids = fmt(fp), {}
  for x in string.gmatch(pr.f.recent_tx or '', '[^,]+') do
    if x == key then return true end
    ids[#ids + 1] = x
  end
  ids[#ids + 1] = key
  if #ids > RECENT_IDS then table.remove(ids, 1) end
  pset(pr, 'recent_tx', table.concat(ids, ','))
  return false
end

local function apply_tx(ev, st, pr)
  local id, uid, ts = ev[1], ev[3], ev[4]
  if seen_tx(pr, ev[5]) then
    dups = dups + 1
    return
  end
  applied = applied + 1
  local tx = {fp = ev[5], completed = ev[6] == 1, amount = ev[7], currency = ev[8], card = ev[9], ip = ev[10],
              country = ev[11], method = ev[12] or ''}
  note_open_sessions(pr, st)          -- first-seen times of the open sessions, for the rules
  tx_rules(ctx, pr, st, uid, ts, tx, id)
  touch(pr, ts)
  if tx.country ~= '' and admit(pr, 'country', 'country:' .. tx.country) then
    first_time(pr, 'country:' .. tx.country, ts)
  end
  if tx.completed then
    pincr(pr, 'orders', 1)
    pincr(pr, 'spend_minor', tx.amount)
    pset(pr, 'currency', tx.currency)
  else
    pincr(pr, 'failed_payments', 1)
  end
end

-- A ticket snapshot: the latest one by event time decides the ticket's status (the statuses of at
-- most MAX_TICKETS tickets per user are followed).
local MAX_TICKETS = 256
local function apply_ticket(ev, pr)
  local id, uid, ts, ticket, open = ev[1], ev[3], ev[4], ev[5], ev[6] == 1
  applied = applied + 1
  touch(pr, ts)
  local key = ctx.prefix .. KEY.tickets .. uid
  local prev = rcall('HGET', key, ticket)
  ticket_rules(ctx, pr, uid, ts, ev[7] or '', not prev, id)
  local was_open, prev_ts = false, nil
  if prev then
    was_open = prev:sub(1, 5) == 'open '
    local at = prev:sub(was_open and 6 or 8)
    prev_ts = tonumber(at) or legacy_time(at)
  else
    pincr(pr, 'tickets', 1)
    if rcall('HLEN', key) >= MAX_TICKETS then      -- counted, but its status is not followed
      pincr(pr, 'capped', 1)
      return
    end
  end
  if prev_ts and ts < prev_ts then return end
  rcall('HSET', key, ticket, (open and 'open ' or 'closed ') .. fmt(ts))
  rcall('PEXPIRE', key, profile_ttl)
  if open ~= was_open then pincr(pr, 'open_tickets', open and 1 or -1) end
end

for _, ev in ipairs(cjson.decode(A.events)) do
  local id, src = ev[1], ev[2]
  if src == 'r' then
    if rcall('XACK', K.rekey, group, id) == 0 then
      dups = dups + 1
    else                                -- not counted as applied: applied counts input events
      for _, rec in ipairs(ev[3]) do apply_forwarded(ctx, rec, id) end
      rcall('XDEL', K.rekey, id)        -- internal plumbing, like a purged repartition topic
    end
  else
    local uid, ts = ev[3], ev[4]
    local st, pr, unreadable = nil, nil, nil
    if not ended and (src ~= 'c' or ts + gap >= wm) then
      if src ~= 'c' then pr, unreadable = load_profile(ctx, uid) end
      if src == 'c' and not unreadable then st, unreadable = load_user(ctx, uid) end
      if src == 't' and not unreadable then st = load_user(ctx, uid) end   -- unreadable: no open sessions to see
      if src == 'k' and not unreadable then
        local kind = rcall('TYPE', ctx.prefix .. KEY.tickets .. uid).ok
        if kind ~= 'none' and kind ~= 'hash' then unreadable = 'support tickets key of the user is not a hash' end
      end
    end
    if unreadable then
      reject(id, unreadable, src)
    elseif take(id, src, uid) then
      if ended then
        to_late(id, src, uid, ts, 'input ended: the partition was flushed (end of input) and its results are final;'
          .. ' run `shopstream reset` to start over, or use another --namespace')
      elseif src == 'c' then
        if ts + gap < wm then
          to_late(id, src, uid, ts, 'late: event time + session gap is behind the partition watermark')
        else
          local refused = apply_click(ev, st)
          if refused then to_late(id, src, uid, ts, refused) end
        end
      elseif src == 't' then
        apply_tx(ev, st, pr)
      else
        apply_ticket(ev, pr)
      end
    end
  end
end

for m, c in pairs(mcount) do
  local mk = fmt(m)
  local ckey, hkey = ctx.prefix .. KEY.count .. mk, ctx.prefix .. KEY.hll .. mk
  rcall('INCRBY', ckey, c)
  rcall('PEXPIRE', ckey, ctx.ttl)
  local us = musers[m]
  for j = 1, #us, 1000 do
    rcall('PFADD', hkey, unpack(us, j, math.min(j + 999, #us)))
  end
  rcall('PEXPIRE', hkey, ctx.ttl)
  rcall('ZADD', ctx.mopen, m, mk)
end

local more_users = sweep(ctx, wm, A.limit)
save_users(ctx, wm)
save_profiles(ctx, profile_ttl)
local outbox = flush_outbox(ctx)
local more_minutes = finalize_minutes(ctx, wm, A.limit)
save_clock(ctx)
rcall('HSET', ctx.state, 'wm', fmt(wm), 'max', fmt(maxts))
if applied > 0 then rcall('HINCRBY', ctx.state, 'applied', applied) end
if dups > 0 then rcall('HINCRBY', ctx.state, 'duplicates', dups) end
if late > 0 then rcall('HINCRBY', ctx.state, 'late', late) end
if dropped > 0 then rcall('HINCRBY', ctx.state, 'erased', dropped) end
if ahead > 0 then rcall('HINCRBY', ctx.state, 'ahead', ahead) end
if ctx.capped > 0 then rcall('HINCRBY', ctx.state, 'capped', ctx.capped) end

return pack_ApplyReply({applied = applied, duplicates = dups, late = late, sessions_closed = ctx.closed,
  minutes_finalized = ctx.finalized, watermark_us = wm, erased = dropped, alerts = ctx.alerted, poison = poison,
  outbox = outbox, more = (more_users or more_minutes) and 1 or 0, ahead = ahead, capped = ctx.capped})
