-- One atomic step per upsert: append the entry to its shard's stream.
-- KEYS[1] the shard's stream
-- ARGV: lead key digest, payload
-- Returns the entry id.
return redis.call('XADD', KEYS[1], '*', 'k', ARGV[1], 'p', ARGV[2])
