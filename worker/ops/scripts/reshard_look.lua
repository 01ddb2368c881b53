-- One look at a layout for `leadsync reshard` (read only; the switch step repeats it).
-- KEYS[1] the config hash, KEYS[2] the reshard hash, then per stream of the old layout
-- (live 0..n-1, then bulk n..2n-1) its stream and its dead-letter stream, then per shard
-- its lease and its rest (Unix seconds until which it rests)
-- ARGV[1] the old count n
-- Returns {live entries, bulk entries, dead letters, leases held, shards resting}.
local function look(old)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local live, bulk, letters, leases, resting = 0, 0, 0, 0, 0
  for s = 0, 2 * old - 1 do
    local entries = redis.call('XLEN', KEYS[3 + 2 * s])
    if s < old then live = live + entries else bulk = bulk + entries end
    letters = letters + redis.call('XLEN', KEYS[4 + 2 * s])
  end
  local base = 2 + 4 * old
  for s = 0, old - 1 do
    leases = leases + redis.call('EXISTS', KEYS[base + 2 * s + 1])
    if (tonumber(redis.call('GET', KEYS[base + 2 * s + 2]) or '0') or 0) > now then
      resting = resting + 1
    end
  end
  return {live, bulk, letters, leases, resting}
end
