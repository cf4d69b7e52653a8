--[[ apply_floor (bench only, engine/tools/benchfloor.py): the least any apply of this design does
  per event - the exactly-once guard and one durable per-user state - on the engine's own batch
  argument, so `shopstream bench` can say how much of the apply is the design's floor.
  KEYS[1] prefix ss:{p}:   (user:<id> STRING: a minimal state, {{start, last - start, events, {event_type = n}}})
  KEYS[2..5] the partition's clicks, tx, support, rekey streams (XACK targets)
  ARGV  group, ttl_ms, events (engine/batch.py: the same JSON array lua/apply_batch.lua takes)
  Per entry: XACK (applied only if it returns 1, like apply_batch); per user and call: GET,
  cmsgpack unpack, count the event, pack, SET PX.  No sessions, minutes, rules or profiles.
  Returns {applied, duplicates}.
]]
local streams = {c = KEYS[2], t = KEYS[3], k = KEYS[4], r = KEYS[5]}
local group, ttl = ARGV[1], ARGV[2]
local users, applied, dups = {}, 0, 0
for _, ev in ipairs(cjson.decode(ARGV[3])) do
  if redis.call('XACK', streams[ev[2]], group, ev[1]) == 0 then
    dups = dups + 1
  elseif ev[2] ~= 'r' then
    applied = applied + 1
    local uid, ts = ev[3], ev[4]
    local st = users[uid]
    if not st then
      local raw = redis.call('GET', KEYS[1] .. 'user:' .. uid)
      st = raw and cmsgpack.unpack(raw) or {ts, 0, 0, {}}
      users[uid] = st
    end
    st[3] = st[3] + 1
    if ts - st[1] > st[2] then st[2] = ts - st[1] end
    if ev[2] == 'c' then st[4][ev[5]] = (st[4][ev[5]] or 0) + 1 end
  end
end
for uid, st in pairs(users) do
  redis.call('SET', KEYS[1] .. 'user:' .. uid, cmsgpack.pack(st), 'PX', ttl)
end
return {applied, dups}
