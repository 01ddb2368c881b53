-- Every record of a batch in one atomic step, each as enqueue.lua does one. Redis checks
-- memory once, before a script starts, so a full Redis refuses the whole batch and never
-- keeps half of it.
-- KEYS: per record, its stream
-- ARGV: per record, lead key digest, payload (as enqueue.lua)
-- Returns the entry ids in record order.
local ids = {}
for i = 1, #KEYS do
  ids[i] = redis.call('XADD', KEYS[i], '*', 'k', ARGV[2 * i - 1], 'p', ARGV[2 * i])
end
return ids
