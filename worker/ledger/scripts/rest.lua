-- A shard rests until Redis's now + delay; a longer rest already set stays (a short
-- backoff must never cut the rest that follows a call whose outcome is unknown).
-- KEYS[1] rest
-- ARGV: delay s, gc margin s (the key outlives the stored time by it; the time decides)
-- Returns the seconds the shard now rests, as a string.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wanted = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if current >= wanted then
  return string.format('%.6f', current - now)
end
redis.call('SET', KEYS[1], string.format('%.6f', wanted),
  'PX', math.ceil((tonumber(ARGV[1]) + tonumber(ARGV[2])) * 1000))
return string.format('%.6f', wanted - now)
