--[[ score: signals -> one risk score per user -> actions, with reason codes; retractions.
  Included after profile and alerts, before rules.lua.
  A signal is a rule's finding about a user, worth some points (ctx.rules.pts and the horizons'
  points; docs/rules.md).  The user's score is the sum of the points of its signals, each halving
  every half-life of event time, kept in the profile as of risk_at (risk_score, risk_at: adding an
  older signal adds its decayed points, so the score does not depend on arrival order).  The
  profile's `reasons` field keeps the latest MAX_REASONS signals (code, points, event time) so
  that every decision can say why, and a signal can be taken back.
  Actions: allow below ctx.rules.act[1], then step_up, review, block (act[1..3]).  A decision record
  is written when a signal lifts the user's action above the action the score had just before it
  (once per crossing, on the triggering event: sub-second); a retraction when later data refutes
  a signal (rules.lua: a completed payment after honest declines; a session that turns out to be
  human): the points are taken out and a decision record with retraction = true gives the action
  that holds now.  Decision records go to the alerts stream with rule 'decision' and are published
  like alerts:
    rule 'decision', severity = action, subject_kind 'user', subject = user_id = the user,
    window_start = the triggering event's time, count = floor(score), threshold = the action's
    threshold (0 for allow), entry_id = the triggering input entry ('' when none), evidence =
    {action, score, trigger (the signal's code), retraction, reasons = [{code, points}, ...]}
    (points decayed to the decision's time, the largest first).
]]
local MAX_REASONS = 16
local ACTIONS = {'allow', 'step_up', 'review', 'block'}

local function level_of(R, score)
  local level = 1
  for i, t in ipairs(R.act) do
    if score >= t then level = i + 1 end
  end
  return level
end

-- The profile's reasons: {{code, points, ts}, ...} oldest first (parsed once per call).
local function reasons_of(pr)
  if pr.reasons then return pr.reasons end
  local list = {}
  for code, pts, ts in string.gmatch(pr.f.reasons or '', '([^=,]+)=([^@]+)@([^,]+)') do
    list[#list + 1] = {code, tonumber(pts) or 0, tonumber(ts) or 0}
  end
  pr.reasons = list
  return list
end

local function save_reasons(pr, list)
  while #list > MAX_REASONS do table.remove(list, 1) end
  local parts = {}
  for i, r in ipairs(list) do parts[i] = r[1] .. '=' .. r[2] .. '@' .. fmt(r[3]) end
  pr.reasons = list
  pset(pr, 'reasons', table.concat(parts, ','))
end

-- The score as of time t (decayed from risk_at when t is later).
local function score_at(R, pr, t)
  local at = ptime(pr, 'risk_at')
  local score = tonumber(pr.f.risk_score) or 0
  if not at or t <= at then return score end
  return score * 2 ^ (-(t - at) / R.score_hl)
end

local function add_score(R, pr, points, ts)
  local at = ptime(pr, 'risk_at')
  local score = tonumber(pr.f.risk_score) or 0
  if not at then
    score, at = points, ts
  elseif ts >= at then
    score, at = score * 2 ^ (-(ts - at) / R.score_hl) + points, ts
  else
    score = score + points * 2 ^ (-(at - ts) / R.score_hl)
  end
  if score < 0.005 then score = 0 end
  pset(pr, 'risk_score', string.format('%.2f', score))
  set_ptime(pr, 'risk_at', at)
end

local function decision(ctx, pr, uid, t, trigger, entry, retraction)
  local R = ctx.rules
  local score = score_at(R, pr, t)
  local level = level_of(R, score)
  -- one reason a code: its signals' decayed points together (a later signal of a code holds only
  -- what it added above the earlier ones, add_signal)
  local reasons, by_code = {}, {}
  for _, r in ipairs(reasons_of(pr)) do
    local p = r[2] * 2 ^ (-math.abs(t - r[3]) / R.score_hl)
    local reason = by_code[r[1]]
    if reason then
      reason.points = reason.points + p
    else
      reason = {code = r[1], points = p}
      by_code[r[1]] = reason
      reasons[#reasons + 1] = reason
    end
  end
  local kept = {}
  for _, reason in ipairs(reasons) do
    if reason.points >= 0.5 then
      reason.points = math.floor(reason.points * 10 + 0.5) / 10
      kept[#kept + 1] = reason
    end
  end
  reasons = kept
  table.sort(reasons, function(a, b) return a.points > b.points or (a.points == b.points and a.code < b.code) end)
  local action = ACTIONS[level]
  pset(pr, 'action', action)
  local evidence = {action = action, score = math.floor(score * 100 + 0.5) / 100, trigger = trigger,
                    retraction = retraction, reasons = reasons}
  emit_record(ctx, {rule = 'decision', sev = action, kind = 'user', subject = uid, uid = uid, window = t,
    count = math.floor(score), threshold = level > 1 and R.act[level - 1] or 0, entry = entry or ''}, evidence)
end

-- Signal `code` worth `points` for user uid at event time ts (pr: the user's profile).  Evidence of
-- one kind does not add up: a code's contribution is its strongest signal (decayed), so a signal
-- adds only what it has above the same code's signals already in the list (a shared IP seen by
-- two horizons, or hour after hour, is one piece of evidence).
local function add_signal(ctx, pr, uid, code, points, ts, entry)
  if not pr or not points or points <= 0 then return end
  local R = ctx.rules
  -- the code's contribution and the new signal's, both at the later of their times: a signal older
  -- than the code's latest adds only what its decayed points have above what is there
  local at = ts
  for _, r in ipairs(reasons_of(pr)) do
    if r[1] == code and r[3] > at then at = r[3] end
  end
  local have = 0
  for _, r in ipairs(reasons_of(pr)) do
    if r[1] == code then have = have + r[2] * 2 ^ (-math.abs(at - r[3]) / R.score_hl) end
  end
  points = points * 2 ^ (-(at - ts) / R.score_hl) - have
  if points < 0.5 then return end
  points = math.floor(points * 100 + 0.5) / 100
  ts = at
  local t = math.max(ts, ptime(pr, 'risk_at') or ts)
  local before = level_of(R, score_at(R, pr, t))
  add_score(R, pr, points, ts)
  local list = reasons_of(pr)
  list[#list + 1] = {code, points, ts}
  save_reasons(pr, list)
  pset(pr, 'last_alert', code .. ' ' .. fmt(ts))
  if level_of(R, score_at(R, pr, t)) > before then decision(ctx, pr, uid, t, code, entry, false) end
end

-- Take back the signals `code` of the user raised at event times in [since, upto] (whose points
-- the list still holds): their decayed points leave the score, and a decision record says the
-- action now (at ts, for input entry `entry`).
local function retract(ctx, pr, uid, code, since, upto, ts, entry)
  if not pr then return end
  local R = ctx.rules
  local list, keep, taken = reasons_of(pr), {}, 0
  local at = ptime(pr, 'risk_at') or ts
  for _, r in ipairs(list) do
    if r[1] == code and r[3] >= since and r[3] <= upto then
      taken = taken + r[2] * 2 ^ (-math.abs(at - r[3]) / R.score_hl)
    else
      keep[#keep + 1] = r
    end
  end
  if taken == 0 then return end
  local score = math.max(0, (tonumber(pr.f.risk_score) or 0) - taken)
  pset(pr, 'risk_score', string.format('%.2f', score))
  save_reasons(pr, keep)
  decision(ctx, pr, uid, math.max(ts, at), code, entry, true)
end

-- A signal of an account first seen less than new_account hours ago (or not yet in the profile):
-- the new_account signal too, once a day.
local function new_account(ctx, pr, uid, ts, entry)
  local R = ctx.rules
  if not R.new_acct then return end
  local first = first_of(pr, 'first_seen')
  if first and ts - first >= R.new_acct then return end
  for _, r in ipairs(reasons_of(pr)) do
    if r[1] == 'new_account' and math.abs(ts - r[3]) < 86400000000 then return end
  end
  add_signal(ctx, pr, uid, 'new_account', R.pts.new_account, ts, entry)
end

-- An alert on the user a.uid (emit: once per rule, window and subject) that scores `points` as
-- signal `code` (default: the rule), with new_account.  pr: the user's profile (nil: loaded
-- here).  Returns whether the alert was new.
local function user_alert(ctx, pr, a, ts, points, code)
  a.kind, a.subject = 'user', a.uid
  if not emit(ctx, a) then return false end
  pr = pr or load_profile(ctx, a.uid)
  if not pr then return true end
  if points and points > 0 then new_account(ctx, pr, a.uid, ts, a.entry) end
  add_signal(ctx, pr, a.uid, code or a.rule, points, ts, a.entry)
  return true
end
