-- Fenced: count one more call for each entry before it is sent (a crash counts too).
-- KEYS[1] lease, KEYS[2] attempts hash; ARGV: token, entry ids...
-- Returns {-1} when the lease is not ours, else {1, count per entry...}.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local counts = {1}
for j = 2, #ARGV do counts[#counts + 1] = redis.call('HINCRBY', KEYS[2], ARGV[j], 1) end
return counts
