--[[ alerts: how the rules emit alerts and keep rule state, included before rules.lua (after
  partition_state, user_state and profile).
  Alerts: XADD <prefix>alerts and PUBLISH, at most once per rule, window and subject (SET NX
  <prefix>fired:<rule>:<window start us>:<kind>:<subject> PX ttl).  An alert on a user raises
  that user's risk score; an alert on another subject (an IP, a card) lives in the subject's
  partition and sends a 'risk' record back to every user involved through the outbox.
  Every field of an alert but detected_at is a function of event times and ids only: a subject
  alert names no user (user_id '', count = the first count that satisfies the rule, entry_id '');
  each user's partition writes a member record (user_id = the user, evidence {"role":"member"})
  when the risk record arrives, dated the window's start.

  Rekeying (Kafka Streams' repartition topics): a rule whose subject is not the user keeps its
  state in the subject's partition.  This script appends one entry to <prefix>outbox holding the
  call's records (atomically with the rest of the call); the consumer sends each record to the
  partition of its key (its second field: crc32 % partitions, engine/partitioning.py), i.e. to
  <ns>:{q}:rekey, and deletes the entry; q's owner applies them like any input.  Forwarding is
  at-least-once, so what a forwarded record changes is idempotent (set / HLL adds, SET NX).
    {'ip', ip, user_id, ts}   {'login', ip, user_id, ts}   {'card', card, user_id, ts, network}
    {'risk', user_id, rule, severity, ts, kind, subject, window, count, threshold, points}

  Caps (EXACT, FAILS below): every velocity ZSET keeps its latest 64 members (rules.lua track),
  the payment-IP sets their first 64 (the rest counted in a HyperLogLog), the failed-payments
  ZSET the latest 64, evidence at most 64 sorted members; no variadic call.  So no input can make a call fail half-way or
  run long (tests/test_hostile.py).

  Erasure index (engine/erase.py reads it; no SCAN of the keyspace): every per-user key this file
  creates whose name is not fixed by the id alone (fired markers of the user's alerts, risk
  markers, uips: / uipx:<w>:<id>) is added, when it is created, to SET
  <prefix>ukeys:<id> in the user's partition; every subject ZSET the user joins (cuz:, ipz:, lgz:) to
  SET <prefix>usets:<id> in the subject's partition.  Both outlive their longest-lived member, by
  at most its TTL (PTTL, PEXPIRE).  Fixed names (user:, profile:, tickets:, fails:, tomb:) are
  not indexed: erase deletes them by name.
]]
-- Caps: no input may make a key, a reply or a loop grow without bound (one user with 10,000 cards,
-- one card with 10,000 users, a bot with 100,000 failed payments).  A distinct count keeps its
-- first EXACT members in a set and counts the others in a HyperLogLog (the overflow: exactness is
-- lost there, and only there); the failed-payments ZSET keeps the user's latest max(count, FAILS)
-- failures.  Alert evidence reads at most EXACT members, sorted.
local EXACT = 64
local FAILS = 64

-- What the rules need beyond partition_state's ctx.  keys: the script's KEYS by name (K).
local function extend_ctx(ctx, keys, now, channel, rules_json, ooo)
  ctx.now, ctx.channel, ctx.outbox = now, channel, keys.outbox
  ctx.rules = cjson.decode(rules_json)
  ctx.ooo = ooo
  ctx.profiles, ctx.out, ctx.alerted, ctx.fired = {}, {}, {}, {}
  ctx.check_tombs = false
  ctx.on_close = nil
end

-- Add key to the erasure index idx (ukeys:<id> / usets:<id>), kept at least ttl_ms more: when it
-- would expire sooner it gets 2 x ttl_ms, so that adds of keys with one TTL (a user's IP windows)
-- extend it once per TTL, not on every add (the index outlives its members by at most one TTL).
local function index_add(idx, key, ttl_ms)
  rcall('SADD', idx, key)
  if rcall('PTTL', idx) < ttl_ms then rcall('PEXPIRE', idx, 2 * ttl_ms) end
end

local function owns(ctx, uid, key, ttl_ms)        -- a key of the user's (deleted by erase)
  index_add(ctx.prefix .. KEY.user_keys .. uid, key, ttl_ms)
end

local function joins(ctx, uid, key, ttl_ms)       -- a subject's set the user is a member of (SREM by erase)
  index_add(ctx.prefix .. KEY.user_sets .. uid, key, ttl_ms)
end

-- Count member among the distinct members of a (subject, window): the first EXACT in SET skey, the
-- others in HyperLogLog hkey; both expire after ttl_ms.  Returns the count (exact up to EXACT, then
-- EXACT + the HyperLogLog's estimate) and whether the member is in the set; nil when the member is
-- in the set already.  Beyond EXACT a repeat cannot be told from a new member (a new one need not
-- change the HyperLogLog): the count is returned, the callers' effects are idempotent.
local function count_distinct(skey, hkey, member, ttl_ms)
  if rcall('SADD', skey, member) == 0 then return nil end
  local n = rcall('SCARD', skey)
  if n == 1 then rcall('PEXPIRE', skey, ttl_ms) end
  if n <= EXACT then return n, true end
  rcall('SREM', skey, member)
  rcall('PFADD', hkey, member)
  rcall('PEXPIRE', hkey, ttl_ms)
  return EXACT + rcall('PFCOUNT', hkey), false
end

local function forward(ctx, rec)
  ctx.out[#ctx.out + 1] = rec
end

-- The outbox entries written by this call (none or one OutboxEntry).
local function flush_outbox(ctx)
  if #ctx.out == 0 then return {} end
  local records = cjson.encode(ctx.out)
  return {pack_OutboxEntry({entry_id = rcall('XADD', ctx.outbox, '*', 'e', records), records = records})}
end

-- Write record a = {rule, sev, kind, subject, uid, window, count, threshold, entry} with evidence
-- (a table) to the alerts stream and publish it.
local function emit_record(ctx, a, evidence)
  local text = cjson.encode(evidence)
  rcall('XADD', ctx.alerts, 'MAXLEN', '~', ctx.maxlen, '*', 'rule', a.rule, 'severity', a.sev,
    'subject_kind', a.kind, 'subject', a.subject, 'user_id', a.uid, 'window_start', fmt(a.window),
    'count', a.count, 'threshold', a.threshold, 'detected_at', fmt(ctx.now), 'entry_id', a.entry,
    'evidence', text)
  rcall('PUBLISH', ctx.channel, cjson.encode({rule = a.rule, severity = a.sev, subject_kind = a.kind,
    subject = a.subject, user_id = a.uid, window_start_ms = math.floor(a.window / 1000), count = a.count,
    threshold = a.threshold, detected_at_ms = math.floor(ctx.now / 1000), entry_id = a.entry,
    evidence = evidence}))
  ctx.alerted[#ctx.alerted + 1] = pack_AlertRef({entry_id = a.entry, rule = a.rule, subject = a.subject,
                                                 window_start_us = a.window})
end

-- Emit alert a = {rule, sev, kind, subject, uid, window, count, threshold, entry, evidence}.
-- Returns false when this rule, window and subject has alerted already.
local function emit(ctx, a)
  local marker = ctx.prefix .. KEY.fired .. a.rule .. (a.mark and '/' .. fmt(a.mark) or '') .. ':' .. fmt(a.window)
    .. ':' .. a.kind .. ':' .. a.subject
  if ctx.fired[marker] ~= nil then return false end
  local fresh = rcall('SET', marker, 1, 'NX', 'PX', ctx.ttl) and true or false
  ctx.fired[marker] = false
  if not fresh then return false end
  if a.kind == 'user' then owns(ctx, a.subject, marker, tonumber(ctx.ttl)) end
  emit_record(ctx, a, a.evidence or {})
  return true
end
