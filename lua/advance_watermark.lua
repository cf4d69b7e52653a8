--[[ advance_watermark: move a partition's watermark forward without input, then close what is due.
  Used for the final flush (target = end of time) and for idle partitions in live mode
  (target = wall clock - idle timeout - out-of-orderness).  Sessions closing here run the
  session rules (lua/includes/rules.lua) and update profiles, as in apply_batch.
  KEYS     as apply_batch.lua (KEYS[1] PREFIX, KEYS[3] state, KEYS[4] open, KEYS[5] mopen,
           KEYS[6] sessions, KEYS[7] alerts, KEYS[9] minutes, KEYS[10] lease; KEYS[2], KEYS[8],
           KEYS[11] .. KEYS[13] unused; KEYS[14] outbox)
  ARGV     consumer ('' = no ownership check), target_wm_us, gap_us, ttl_ms, maxlen, limit,
           now_us, channel, profile_ttl_ms, rules (JSON)
  Returns  {sessions_closed, minutes_finalized, more (1 = call again), watermark_us,
            alerts {entry_id, rule, subject, window_start_us, ...}}
  Errors   SS_NOT_OWNER when ARGV[1] is given and KEYS[10] does not hold it.
  Idempotent: yes - the watermark never goes back; a second call finds nothing due.
]]
--@include partition_state
--@include profile
--@include rules

local consumer = ARGV[1]
local target, gap, ttl, maxlen, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])

if consumer ~= '' and rcall('GET', KEYS[10]) ~= consumer then
  return redis.error_reply('SS_NOT_OWNER ' .. KEYS[10] .. ' is not held by ' .. consumer)
end

local ctx = new_ctx(KEYS, gap, ttl, maxlen)
extend_ctx(ctx, KEYS, tonumber(ARGV[7]), ARGV[8], ARGV[10], 0)
ctx.on_close = session_rules
ctx.on_legacy = uncount_legacy
local wm = read_watermark(ctx)
if target > wm then
  wm = target
  rcall('HSET', ctx.state, 'wm', fmt(wm))
end
local more_users = sweep(ctx, wm, limit)
save_users(ctx, wm)
save_profiles(ctx, ARGV[9])
flush_outbox(ctx)
local more_minutes = finalize_minutes(ctx, wm, limit)
local more = 0
if more_users or more_minutes then more = 1 end
return {ctx.closed, ctx.finalized, more, fmt(wm), ctx.alerted}
