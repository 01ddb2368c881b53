-- Admission, prepended to the enqueue steps: new work is refused (the step returns an
-- error reply starting with BACKPRESSURE) before Redis fills, instead of an OOM error
-- once it has: when the shard's stream already holds max_backlog entries, or Redis's
-- used memory is at high_water of its maxmemory. The memory figures come from INFO at
-- most ten times a second (cached in cache_key for 100 ms): INFO per upsert would cost
-- more than the upsert, and a second's writes could overshoot the margin.
-- Returns nil when admitted, else the refusal's text.
local function refusal(cache_key, stream, max_backlog, high_water)
  if max_backlog > 0 and redis.call('XLEN', stream) >= max_backlog then
    return 'BACKPRESSURE backlog: a shard holds ' .. max_backlog .. ' waiting upserts'
  end
  if high_water <= 0 then return nil end
  local cached = redis.call('HMGET', cache_key, 'used', 'max')
  local used, max = tonumber(cached[1]), tonumber(cached[2])
  if not used then
    local info = redis.pcall('INFO', 'memory')
    used, max = 0, 0
    if type(info) == 'string' then -- a stand-in without INFO in scripts: no bound
      used = tonumber(string.match(info, 'used_memory:(%d+)')) or 0
      max = tonumber(string.match(info, 'maxmemory:(%d+)')) or 0
    end
    redis.call('HSET', cache_key, 'used', used, 'max', max)
    redis.call('PEXPIRE', cache_key, 100)
  end
  if max > 0 and used >= high_water * max then
    return 'BACKPRESSURE memory: Redis is at ' .. math.floor(100 * used / max)
      .. '% of its maxmemory'
  end
  return nil
end
