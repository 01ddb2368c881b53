-- One atomic step per upsert: append the entry and record it as its lead's newest.
-- KEYS[1] the shard's stream, KEYS[2] the lead's newest-enqueued id
-- ARGV: lead key digest, payload, TTL of the newest id (0 for a dedup=false upsert,
--       which creates a new lead and so is never anyone's newest write)
-- Returns the entry id.
local i = redis.call('XADD', KEYS[1], '*', 'k', ARGV[1], 'p', ARGV[2])
if ARGV[3] ~= '0' then redis.call('SET', KEYS[2], i, 'EX', ARGV[3]) end
return i
