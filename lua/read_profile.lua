--[[ read_profile: a user's customer profile as a reader should see it, open sessions included.
  The profile hash gets the click fields of a session when the session closes; this script folds
  the user's open sessions into a copy of the profile (lua/includes/profile.lua fold_session),
  so `shopstream profile` and the export show every applied event.  Read-only.
  KEYS[1]  ss:{p}:  PREFIX  derived here: profile:<id> HASH, user:<id> STRING (as apply_batch.lua)
  ARGV     user_id
  Returns  {field, value, ...} (empty when the user has neither a profile nor an open session).
           A key that cannot be read (another type, not the engine's encoding) contributes nothing:
           the apply dead-letters that user's events, and a reader still gets what can be read.
]]
--@include partition_state
--@include user_state
--@include profile

local uid = A.user_id
local ctx = {prefix = K.prefix, users = {}, profiles = {}, on_legacy = uncount_legacy}
local pr = load_profile(ctx, uid) or new_profile({})
local st = load_user(ctx, uid)
for _, se in ipairs(st and st.sessions or {}) do fold_session(pr, se) end
settle(pr)
local out = {}
for field, value in pairs(pr.f) do
  out[#out + 1] = field
  out[#out + 1] = value
end
return out
