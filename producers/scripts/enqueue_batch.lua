-- Every record of a batch in one atomic step, each as enqueue.lua does one. Redis checks
-- memory once, before a script starts, so a full Redis refuses the whole batch and never
-- keeps half of it.
-- KEYS: per record, its stream then its newest-id key
-- ARGV: per record, lead key digest, payload, TTL of the newest id (as enqueue.lua)
-- Returns the entry ids in record order.
local ids = {}
for i = 1, #ARGV / 3 do
  local a = (i - 1) * 3
  local id = redis.call('XADD', KEYS[2 * i - 1], '*', 'k', ARGV[a + 1], 'p', ARGV[a + 2])
  if ARGV[a + 3] ~= '0' then redis.call('SET', KEYS[2 * i], id, 'EX', ARGV[a + 3]) end
  ids[i] = id
end
return ids
