-- The first hold sets since and next_probe; holding again only updates the reason.
-- KEYS[1] hold HASH; ARGV: now, probe_interval_s, reason
local created = redis.call('HSETNX', KEYS[1], 'since', string.format('%.6f', now))
redis.call('HSETNX', KEYS[1], 'next_probe', string.format('%.6f', now + tonumber(ARGV[2])))
redis.call('HSET', KEYS[1], 'reason', ARGV[3])
return created
