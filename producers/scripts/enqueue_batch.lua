-- Every record of a batch in one atomic step, each as enqueue.lua does one: all are
-- admitted (admit.lua, prepended) or none. Redis checks memory once, before a script
-- starts, so a full Redis refuses the whole batch and never keeps half of it.
-- KEYS: the admission cache, then per record its stream
-- ARGV: max backlog per shard, memory high water, then per record lead key digest and
--       payload (as enqueue.lua)
-- Returns the entry ids in record order, or an error reply BACKPRESSURE ... with nothing
-- written.
local max_backlog, high_water = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 2, #KEYS do
  local refused = refusal(KEYS[1], KEYS[i], max_backlog, high_water)
  if refused then return redis.error_reply(refused) end
end
local ids = {}
for i = 2, #KEYS do
  ids[i - 1] = redis.call('XADD', KEYS[i], '*', 'k', ARGV[2 * i - 1], 'p', ARGV[2 * i])
end
return ids
