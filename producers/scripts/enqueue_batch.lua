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
-- A ticket (a backfill's journal: a step it may send again after a crash) adds one last
-- KEY, its hash, and two last ARGV: the step's ticket and its records' stream numbers.
-- A step whose ticket is the hash's is answered TICKET with the stream numbers and entry
-- ids it wrote then, and nothing is written again; otherwise the hash takes this step's.
-- Returns the entry ids in record order, {'TICKET', numbers, ids} (space-separated), or
-- an error reply BACKPRESSURE ..., RESHARDED n or REKEYED rule with nothing written.
local TICKET_TTL_MS = 30 * 86400 * 1000
local max_backlog, high_water = tonumber(ARGV[1]), tonumber(ARGV[2])
local bulk = ARGV[3] == '1'
local records = math.floor((#KEYS - 3) / 3)
local ticket_key = (#KEYS - 3) % 3 == 1 and KEYS[#KEYS] or nil
if ticket_key then
  local seen = redis.call('HMGET', ticket_key, 't', 'n', 'i')
  if seen[1] == ARGV[#ARGV - 1] then return {'TICKET', seen[2], seen[3]} end
end
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
if ticket_key then
  redis.call('HSET', ticket_key, 't', ARGV[#ARGV - 1], 'n', ARGV[#ARGV], 'i', table.concat(ids, ' '))
  redis.call('PEXPIRE', ticket_key, TICKET_TTL_MS)
end
return ids
