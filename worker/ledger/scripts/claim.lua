-- Fenced: only the lease holder reads. Renews the lease, claims pending entries from
-- the cursor on (any consumer's: a crashed holder's entries come back), and reads
-- never-delivered entries ONLY once every pending entry has been claimed: a newer
-- write must never go out before an older pending write of the same lead.
-- A bulk stream (KEYS[3]: its shard's live stream) gives nothing while a live entry
-- waits: live writes go first, and a bulk write never overtakes an older live one.
-- KEYS[1] lease, KEYS[2] stream, KEYS[3] the live stream when KEYS[2] is a bulk one, else
-- KEYS[2] again (every key named is a real one: ACL key patterns check each)
-- ARGV: token, lease ttl ms, group, consumer, cursor ('0-0' to start, 'done' once the
--       pending list was walked), count
-- Returns {-1} when the lease is not ours, else {1, cursor, entries}.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if KEYS[3] ~= KEYS[2] and redis.call('XLEN', KEYS[3]) > 0 then return {1, 'done', {}} end
local group, consumer, cursor, want = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local entries = {}
while cursor ~= 'done' and #entries < want do
  local reply = redis.call('XAUTOCLAIM', KEYS[2], group, consumer, 0, cursor,
    'COUNT', want - #entries)
  for _, entry in ipairs(reply[2]) do
    if entry[2] then entries[#entries + 1] = entry end
  end
  cursor = reply[1]
  if cursor == '0-0' then cursor = 'done' end
end
if cursor == 'done' and #entries < want then
  local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer,
    'COUNT', want - #entries, 'STREAMS', KEYS[2], '>')
  if fresh then
    for _, entry in ipairs(fresh[1][2]) do entries[#entries + 1] = entry end
  end
end
return {1, cursor, entries}
