-- A cooldown shared by every pod; a longer one already set stays.
-- KEYS[1] cooldown HASH; ARGV: now, seconds, reason, gc_margin_s
local until_s = now + tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'until'))
if current and current >= until_s then return 0 end
redis.call('HSET', KEYS[1], 'until', string.format('%.6f', until_s), 'reason', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) + tonumber(ARGV[4])) * 1000))
return 1
