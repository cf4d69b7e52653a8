--[[ claim_lease: take or renew ownership of a partition.
  KEYS[1] ss:{p}:lease  STRING  owner consumer name, expires after ARGV[2] ms
  ARGV    consumer, ttl_ms
  Returns 1 when ARGV[1] holds the lease now (taken or renewed), 0 when another consumer does.
  Idempotent: yes.
]]
local owner = redis.call('GET', K.lease)
if owner == false or owner == A.consumer then
  redis.call('SET', K.lease, A.consumer, 'PX', A.ttl_ms)
  return 1
end
return 0
