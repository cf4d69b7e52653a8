--[[ release_lease: give up ownership of a partition, only if still held by this consumer.
  KEYS[1] ss:{p}:lease  STRING  owner consumer name
  ARGV    consumer
  Returns 1 when released, 0 when the lease was not ours (expired or taken).
  Idempotent: yes.
]]
if redis.call('GET', K.lease) == A.consumer then
  redis.call('DEL', K.lease)
  return 1
end
return 0
