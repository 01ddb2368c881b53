-- A call whose outcome is unknown (timed out, a gateway page, a reply lost after the
-- request was written) may still run in Marketo, which counts it against the concurrency
-- limit: its slot stays taken until now + hold_s instead of being released (a longer
-- expiry already set stays).
-- KEYS[1] slots ZSET slot member -> slot expiry
-- ARGV: now ('' for Redis TIME), slot member, hold_s, gc_margin_s
-- (now: from now.lua, prepended)
local until_s = now + tonumber(ARGV[3])
local current = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]) or '0') or 0
if current < until_s then
  redis.call('ZADD', KEYS[1], until_s, ARGV[2])
end
local ttl_ms = math.ceil((tonumber(ARGV[3]) + tonumber(ARGV[4])) * 1000)
if redis.call('PTTL', KEYS[1]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return 1
