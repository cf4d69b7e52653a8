--[[ apply_batch: apply one partition's decoded click events atomically, in stream order.
  KEYS[1]  ss:{p}:           PREFIX  derived here: user:<id> STRING, count:<m> STRING, hll:<m> HLL,
                                     fired:<m>:<id> STRING, tomb:<id> STRING (same hash tag, same slot)
  KEYS[2]  ss:{p}:clicks     STREAM  input (XACK target; XRANGE of a late entry's payload)
  KEYS[3]  ss:{p}:state      HASH    wm, max, tombs_until, applied, duplicates, late, erased
  KEYS[4]  ss:{p}:open       ZSET    user -> due (earliest close time, lower bound)
  KEYS[5]  ss:{p}:mopen      ZSET    minutes not yet finalized
  KEYS[6]  ss:{p}:sessions   STREAM  closed sessions (out)
  KEYS[7]  ss:{p}:alerts     STREAM  alerts (out)
  KEYS[8]  ss:{p}:late       STREAM  late events (out)
  KEYS[9]  ss:{p}:minutes    STREAM  finalized minutes (out)
  KEYS[10] ss:{p}:lease      STRING  name of the owning consumer
  ARGV  consumer, group, now_us, gap_us, ooo_us, threshold, ttl_ms, maxlen, channel,
        events: JSON array of [entry_id, user_id, ts_us, event_type, fingerprint] in stream order
        (fingerprint of the producer's event_id, 0 if none: a retry seen among the user's last
        16 events while the user has an open session is acknowledged and counted as a duplicate)
  Returns {applied, duplicates, late, sessions_closed, minutes_finalized, watermark_us, erased,
           alerts {entry_id, user_id, window_start_us, ...}, poison {entry_id, reason, ...}}
  Poison: events of a user whose state key cannot be read are neither applied nor acknowledged;
  the caller moves them to the dead-letter stream.
  Erased users (KEYS[1] tomb:<id>, looked up only while KEYS[3].tombs_until > now): their
  events are acknowledged, deleted from the input stream and counted as erased, nothing else.
  Errors  SS_NOT_OWNER when KEYS[10] does not hold ARGV[1]; nothing is changed.
  Idempotent: yes - an entry is applied only if its XACK returned 1.
  Semantics (DESIGN §3): watermark W = max event time - ooo, never decreasing; an event is late
  when ts + gap < W (to KEYS[8], not applied); before an event touches a user, that user's
  sessions with last + gap < W are closed, so results depend on stream order only, not on
  how entries were batched.
]]
--@include partition_state

local consumer, group = ARGV[1], ARGV[2]
local now, gap, ooo = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local threshold, ttl, maxlen, channel = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]

if rcall('GET', KEYS[10]) ~= consumer then
  return redis.error_reply('SS_NOT_OWNER ' .. KEYS[10] .. ' is not held by ' .. consumer)
end

local ctx = new_ctx(KEYS, gap, ttl, maxlen)
local wm, maxts, tombs_until = read_watermark(ctx)
local check_tombs = tombs_until > now
local applied, dups, late, dropped = 0, 0, 0, 0
local alerts, poison = {}, {}
local mcount, musers, mseen = {}, {}, {}

for _, ev in ipairs(cjson.decode(ARGV[10])) do
  local id, uid, ts, etype, fp = ev[1], ev[2], ev[3], ev[4], ev[5]
  local st, unreadable = nil, nil
  if ts + gap >= wm then st, unreadable = load_user(ctx, uid) end
  if unreadable then
    poison[#poison + 1] = id            -- not acknowledged: the caller dead-letters it
    poison[#poison + 1] = unreadable
  elseif rcall('XACK', ctx.stream, group, id) == 0 then
    dups = dups + 1
  elseif check_tombs and erased(ctx, uid) then
    dropped = dropped + 1
    rcall('XDEL', ctx.stream, id)
  elseif ts + gap < wm then
    late = late + 1
    local entry = rcall('XRANGE', ctx.stream, id, id)[1]
    local payload = entry and entry[2][2] or ''
    rcall('XADD', ctx.late, 'MAXLEN', '~', maxlen, '*', 'entry_id', id, 'user_id', uid, 'ts', fmt(ts),
      'watermark', fmt(wm), 'reason', 'late: event time + session gap is behind the partition watermark',
      'payload', payload)
  elseif fp ~= 0 and seen_before(st, fp) then
    dups = dups + 1                     -- a producer retry of an event applied already
  else
    applied = applied + 1
    if ts > maxts then
      maxts = ts
      if ts - ooo > wm then wm = ts - ooo end
    end
    if #st.sessions > 0 then close_due(ctx, uid, st, wm) end

    -- sessions: merge the event into every open session it is within gap of
    local hit, many = nil, false
    for _, se in ipairs(st.sessions) do
      if ts >= se.s - gap and ts <= se.l + gap then
        if hit then many = true else hit = se end
      end
    end
    if not hit then
      st.sessions[#st.sessions + 1] = {s = ts, l = ts, n = 1, t = {[etype] = 1}}
    elseif not many then
      if ts < hit.s then hit.s = ts end
      if ts > hit.l then hit.l = ts end
      hit.n = hit.n + 1
      hit.t[etype] = (hit.t[etype] or 0) + 1
    else
      local merged, keep = {s = ts, l = ts, n = 1, t = {[etype] = 1}}, {}
      for _, se in ipairs(st.sessions) do
        if ts >= se.s - gap and ts <= se.l + gap then
          if se.s < merged.s then merged.s = se.s end
          if se.l > merged.l then merged.l = se.l end
          merged.n = merged.n + se.n
          for k, c in pairs(se.t) do merged.t[k] = (merged.t[k] or 0) + c end
        else
          keep[#keep + 1] = se
        end
      end
      keep[#keep + 1] = merged
      st.sessions = keep
    end

    -- per-minute metrics, aggregated for the whole batch
    local m = math.floor(ts / US_PER_MIN)
    mcount[m] = (mcount[m] or 0) + 1
    local seen = mseen[m]
    if not seen then seen = {}; mseen[m] = seen; musers[m] = {} end
    if not seen[uid] then seen[uid] = true; local us = musers[m]; us[#us + 1] = uid end

    -- rule events_per_minute: fires on the (threshold + 1)-th event of a user-minute, once
    local c = (st.minutes[m] or 0) + 1
    st.minutes[m] = c
    if c == threshold + 1 and rcall('SET', ctx.prefix .. 'fired:' .. fmt(m) .. ':' .. uid, 1, 'NX', 'PX', ttl) then
      local wstart = m * US_PER_MIN
      rcall('XADD', ctx.alerts, 'MAXLEN', '~', maxlen, '*', 'rule', 'events_per_minute', 'user_id', uid,
        'window_start', fmt(wstart), 'count', c, 'threshold', threshold, 'detected_at', fmt(now), 'entry_id', id)
      rcall('PUBLISH', channel, cjson.encode({rule = 'events_per_minute', user_id = uid,
        window_start_ms = wstart / 1000, count = c, threshold = threshold,
        detected_at_ms = math.floor(now / 1000), entry_id = id}))
      alerts[#alerts + 1] = id
      alerts[#alerts + 1] = uid
      alerts[#alerts + 1] = fmt(wstart)
    end
  end
end

for m, c in pairs(mcount) do
  local mk = fmt(m)
  local ckey, hkey = ctx.prefix .. 'count:' .. mk, ctx.prefix .. 'hll:' .. mk
  rcall('INCRBY', ckey, c)
  rcall('PEXPIRE', ckey, ttl)
  local us = musers[m]
  for j = 1, #us, 1000 do
    rcall('PFADD', hkey, unpack(us, j, math.min(j + 999, #us)))
  end
  rcall('PEXPIRE', hkey, ttl)
  rcall('ZADD', ctx.mopen, m, mk)
end

sweep(ctx, wm, 1000000)
save_users(ctx, wm)
finalize_minutes(ctx, wm, 1000000)
rcall('HSET', ctx.state, 'wm', fmt(wm), 'max', fmt(maxts))
if applied > 0 then rcall('HINCRBY', ctx.state, 'applied', applied) end
if dups > 0 then rcall('HINCRBY', ctx.state, 'duplicates', dups) end
if late > 0 then rcall('HINCRBY', ctx.state, 'late', late) end
if dropped > 0 then rcall('HINCRBY', ctx.state, 'erased', dropped) end

return {applied, dups, late, ctx.closed, ctx.finalized, fmt(wm), dropped, alerts, poison}
