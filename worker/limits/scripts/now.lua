-- Prepended to every limiter step: ``now`` is ARGV[1] when a test injects a clock,
-- else Redis's own TIME, so every pod decides on one clock.
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
