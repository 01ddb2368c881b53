-- Fenced: count one more call for each entry before it is sent (a crash counts too).
-- A stream's counters are spread over sub-hashes by entry id, each field the id as one
-- integer (Keys.attempts_slot), so each sub-hash stays a small listpack. Each lives ttl
-- after its last count: its fields belong to pending entries (settle removes them), and
-- the expiry only collects a counter left untouched that long. A counter the previous
-- version kept in the stream's one attempts hash (KEYS[2], by entry id) moves to its
-- sub-hash here, so an upgrade forgets no attempt.
-- KEYS[1] lease, KEYS[2] the previous version's attempts hash, then the sub-hashes
-- ARGV: token, ttl s, then per entry: its sub-hash's index in KEYS, its field, entry id
-- Returns {-1} when the lease is not ours, else {1, count per entry...}.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local legacy = redis.call('EXISTS', KEYS[2]) == 1
local counts = {1}
for j = 3, #ARGV, 3 do
  local by = 1
  if legacy then
    local before = tonumber(redis.call('HGET', KEYS[2], ARGV[j + 2]))
    if before then
      by = by + before
      redis.call('HDEL', KEYS[2], ARGV[j + 2])
    end
  end
  counts[#counts + 1] = redis.call('HINCRBY', KEYS[tonumber(ARGV[j])], ARGV[j + 1], by)
end
for i = 3, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return counts
