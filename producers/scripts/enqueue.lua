-- One atomic step per upsert: admission (admit.lua, prepended), then append the entry to
-- its shard's stream.
-- KEYS[1] the shard's stream, KEYS[2] the admission cache
-- ARGV: lead key digest, payload, max backlog per shard (0: none), memory high water
--       (a fraction of maxmemory; 0: none)
-- Returns the entry id, or an error reply BACKPRESSURE ... with nothing written.
local refused = refusal(KEYS[2], KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
if refused then return redis.error_reply(refused) end
return redis.call('XADD', KEYS[1], '*', 'k', ARGV[1], 'p', ARGV[2])
