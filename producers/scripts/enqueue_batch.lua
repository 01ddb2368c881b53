-- Every record of a batch in one atomic step, each as enqueue.lua does one: all are
-- admitted (admit.lua, prepended) or none. Redis checks memory once, before a script
-- starts, so a full Redis refuses the whole batch and never keeps half of it.
-- KEYS: the admission cache, the config and reshard hashes (the shard-count fence,
--       fence.lua), then per record
--       its lane's stream, its shard's id sequence and its written-fields hash (as
--       enqueue.lua)
-- ARGV: max backlog per shard, memory high water, 1 for the bulk lane else 0, the shard
--       count and the key rule the records were placed by, then per record lead key
--       digest and payload (as enqueue.lua)
-- Returns the entry ids in record order, or an error reply BACKPRESSURE ..., RESHARDED n
-- or REKEYED rule with nothing written.
local max_backlog, high_water = tonumber(ARGV[1]), tonumber(ARGV[2])
local bulk = ARGV[3] == '1'
local records = (#KEYS - 3) / 3
local moved = layout_refusal(KEYS[2], KEYS[3], ARGV[4], ARGV[5])
if moved then return redis.error_reply(moved) end
for i = 1, records do
  local refused = refusal(KEYS[1], KEYS[3 * i + 1], max_backlog, high_water)
  if refused then return redis.error_reply(refused) end
end
local ids = {}
for i = 1, records do
  if bulk then mark_bulk(KEYS[3 * i + 3]) end
  ids[i] = xadd_next(KEYS[3 * i + 1], KEYS[3 * i + 2], 'k', ARGV[2 * i + 4], 'p', ARGV[2 * i + 5])
end
return ids
