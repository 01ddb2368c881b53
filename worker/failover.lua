-- Prepended to the steps that grant a call (a shard lease, a limiter permit).
--
-- Replication is asynchronous: a master that changed (a Sentinel failover, or a restart
-- that lost its last second of writes) may have rolled back leases, rests and the rate
-- window. The first step that runs on a new master (its run_id differs from the stored
-- one) stores the time of the change; each granting step then stays quiet for its own
-- period after it (the limiter for one rate window; leases for as long as a call sent
-- before may still be running or being applied, unless WAIT made leases survive).
--
-- guard_key: HASH run_id, changed_at (Redis seconds; 0 when first seen: nothing to guard)
-- Returns the seconds still to stay quiet (<= 0: none), on Redis's clock.
local function failover_quiet_s(guard_key, quiet_s)
  local info = redis.pcall('INFO', 'server')
  if type(info) ~= 'string' then return 0 end -- a stand-in without INFO in scripts
  local run_id = string.match(info, 'run_id:(%x+)')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local seen = redis.call('HGET', guard_key, 'run_id')
  if seen ~= run_id then
    local changed_at = 0
    if seen then changed_at = now end
    redis.call('HSET', guard_key, 'run_id', run_id, 'changed_at', string.format('%.6f', changed_at))
    return changed_at + quiet_s - now
  end
  return (tonumber(redis.call('HGET', guard_key, 'changed_at')) or 0) + quiet_s - now
end
