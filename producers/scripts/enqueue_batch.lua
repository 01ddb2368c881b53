-- Every record of a batch in one atomic step, each as enqueue.lua does one: all are
-- admitted (admit.lua, prepended) or none. Redis checks memory once, before a script
-- starts, so a full Redis refuses the whole batch and never keeps half of it.
-- KEYS: the admission cache, then per record its lane's stream, its shard's id sequence
--       and its written-fields hash (as enqueue.lua)
-- ARGV: max backlog per shard, memory high water, 1 for the bulk lane else 0, then per
--       record lead key digest and payload (as enqueue.lua)
-- Returns the entry ids in record order, or an error reply BACKPRESSURE ... with nothing
-- written.
local max_backlog, high_water = tonumber(ARGV[1]), tonumber(ARGV[2])
local bulk = ARGV[3] == '1'
local records = (#KEYS - 1) / 3
for i = 1, records do
  local refused = refusal(KEYS[1], KEYS[3 * i - 1], max_backlog, high_water)
  if refused then return redis.error_reply(refused) end
end
local ids = {}
for i = 1, records do
  if bulk then mark_bulk(KEYS[3 * i + 1]) end
  ids[i] = xadd_next(KEYS[3 * i - 1], KEYS[3 * i], 'k', ARGV[2 * i + 2], 'p', ARGV[2 * i + 3])
end
return ids
