--[[ advance_watermark: move a partition's watermark forward without input, then close what is due.
  Used for the final flush (target = end of time), for idle partitions in live mode (target = wall
  clock - idle timeout - out-of-orderness) and to continue closing what one apply call left due
  (target = 0: the watermark stays).  Sessions closing here run the session rules
  (lua/includes/rules.lua) and update profiles, as in apply_batch.
  KEYS[1] ss:{p}:          PREFIX  as apply_batch.lua (user:, profile:, count:, hll:, fired: keys)
  KEYS[2] ss:{p}:state     HASH    wm
  KEYS[3] ss:{p}:open      ZSET    users with something due
  KEYS[4] ss:{p}:mopen     ZSET    minutes not yet finalized
  KEYS[5] ss:{p}:sessions  STREAM  closed sessions (out)
  KEYS[6] ss:{p}:alerts    STREAM  alerts of the session rules (out)
  KEYS[7] ss:{p}:minutes   STREAM  finalized minutes (out)
  KEYS[8] ss:{p}:lease     STRING  owner (checked when ARGV consumer is given)
  KEYS[9] ss:{p}:outbox    STREAM  risk records for other partitions (out)
  KEYS[10] ss:{p}:profiles STREAM  profile changelog (out; lua/includes/profile.lua save_profiles)
  ARGV     consumer ('' = no ownership check), target_us, gap_us, ttl_ms, maxlen, limit, now_us,
           channel, profile_ttl_ms, rules (JSON)   (names: engine/contract.py AdvanceArgs)
  Returns  AdvanceReply {sessions_closed, minutes_finalized, more (1 = call again), watermark_us,
           alerts {AlertRef...}}
  Errors   SS_NOT_OWNER when ARGV consumer is given and KEYS[8] does not hold it.
  Bounded: at most `limit` users and minutes per call.
  Idempotent: yes - the watermark never goes back; a second call finds nothing due.
]]
--@include partition_state
--@include user_state
--@include profile
--@include alerts
--@include rules

if A.consumer ~= '' and rcall('GET', K.lease) ~= A.consumer then
  return redis.error_reply('SS_NOT_OWNER ' .. K.lease .. ' is not held by ' .. A.consumer)
end

local ctx = new_ctx(K, A.gap_us, A.ttl_ms, A.maxlen)
extend_ctx(ctx, K, A.now_us, A.channel, A.rules, 0)
ctx.on_close = session_rules
ctx.on_legacy = uncount_legacy
local wm = read_watermark(ctx)
if A.target_us > wm then
  wm = A.target_us
  rcall('HSET', ctx.state, 'wm', fmt(wm))
end
local more_users = sweep(ctx, wm, A.limit)
save_users(ctx, wm)
save_profiles(ctx, A.profile_ttl_ms)
flush_outbox(ctx)
local more_minutes = finalize_minutes(ctx, wm, A.limit)
return pack_AdvanceReply({sessions_closed = ctx.closed, minutes_finalized = ctx.finalized,
  more = (more_users or more_minutes) and 1 or 0, watermark_us = wm, alerts = ctx.alerted})
