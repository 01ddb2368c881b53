-- Take a shard's lease, unless another holder has it, the shard rests, or the master
-- changed lately (failover.lua, prepended: the lease of a call still running may have
-- been rolled back). A rest follows a call whose outcome is unknown (Marketo may still
-- be applying it) or transient faults: checking it HERE, on Redis's clock, stops every
-- sender (the tick, a queued or redelivered drain message, a cross-shard drain), not
-- just the tick.
-- KEYS[1] lease, KEYS[2] rest (Unix seconds until which the shard rests), KEYS[3] the
-- failover guard
-- ARGV: token, lease ttl ms, quiet s after a master change
-- Returns {1} when taken, {0, 'busy'} or {0, 'rest', seconds left as a string}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local quiet = failover_quiet_s(KEYS[3], tonumber(ARGV[3]))
if quiet > 0 then
  return {0, 'rest', string.format('%.6f', quiet)}
end
local rest_until = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if rest_until > now then
  return {0, 'rest', string.format('%.6f', rest_until - now)}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
return {0, 'busy'}
