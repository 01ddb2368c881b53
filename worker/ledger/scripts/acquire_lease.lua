-- Take a shard's lease, unless another holder has it, the shard rests, or the master
-- changed lately (failover.lua, prepended: the lease of a call still running may have
-- been rolled back). A rest follows a call whose outcome is unknown (Marketo may still
-- be applying it) or transient faults: checking it HERE, on Redis's clock, stops every
-- sender (the tick, a queued or redelivered drain message, a cross-shard drain), not
-- just the tick.
-- The shard-count fence: a worker that numbers shards by another count than the stored
-- one (`leadsync reshard` changed it) takes no lease and is told the stored count; while
-- a reshard switches layouts, no lease is taken at all.
-- KEYS[1] lease, KEYS[2] rest (Unix seconds until which the shard rests), KEYS[3] the
-- failover guard, KEYS[4] the config hash, KEYS[5] the reshard hash
-- ARGV: token, lease ttl ms, quiet s after a master change, the caller's shard count
-- ('' before it agreed one: no fence)
-- Returns {1} when taken, {0, 'busy'}, {0, 'rest', seconds left as a string},
-- {0, 'resharded', the stored count} or {0, 'resharding'}.
if redis.call('HGET', KEYS[5], 'phase') == 'switch' then
  return {0, 'resharding'}
end
local stored = redis.call('HGET', KEYS[4], 'shards')
if stored and ARGV[4] ~= '' and stored ~= ARGV[4] then
  return {0, 'resharded', stored}
end
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
