-- Marketo says the daily quota is spent (20015): raise the day's counter to the limit.
-- KEYS[1] quota counter; ARGV: now (unused), quota_limit, ttl_ms
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used < tonumber(ARGV[2]) then redis.call('SET', KEYS[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return used
