-- One atomic step per upsert: admission (admit.lua, prepended), then append the entry to
-- its lane's stream of its shard with the shard's next id (next_id.lua, prepended).
-- KEYS[1] the lane's stream, KEYS[2] the admission cache, KEYS[3] the shard's id
-- sequence, KEYS[4] the lead's written-fields hash (marked for a bulk write), KEYS[5] the
-- config hash and KEYS[6] the reshard hash (the shard-count fence, fence.lua)
-- ARGV: lead key digest, payload, max backlog per shard (0: none), memory high water
--       (a fraction of maxmemory; 0: none), 1 for the bulk lane else 0, the shard count
--       and the key rule the entry was placed by
-- Returns the entry id, or an error reply BACKPRESSURE ..., RESHARDED n or REKEYED rule
-- with nothing written.
local refused = layout_refusal(KEYS[5], KEYS[6], ARGV[6], ARGV[7])
  or refusal(KEYS[2], KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
if refused then return redis.error_reply(refused) end
if ARGV[5] == '1' then mark_bulk(KEYS[4]) end
return xadd_next(KEYS[1], KEYS[3], 'k', ARGV[1], 'p', ARGV[2])
