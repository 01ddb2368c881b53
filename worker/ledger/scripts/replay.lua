-- Put one lead's parked writes back together, in write order, atomically. Each goes back
-- only while it is still parked: a new entry with the same key and payload and
-- o = the original entry id, so the drain merges it at the original write's place (before
-- any newer write still waiting) and answers the original request id too; a newer write
-- Marketo already applied keeps its fields (the drain drops them from the replayed one,
-- see settle.lua's written fields), unless the replay is forced (f = 1). A write every one
-- of whose fields a newer applied write set is answered terminal instead (superseded).
-- A write parked from a bulk stream goes back into it marked as bulk (its lead's
-- written-fields hash counts it in ~bulk, as the enqueue step does), so live writes
-- applied while it waits record the fields it must not send over them.
-- The shard-count fence: the letters were read by a shard count (their stream number
-- names that layout's stream); under another one, or while a reshard switches layouts,
-- nothing goes back (an error reply RESHARDED: read them again).
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] the lead's written-fields hash,
-- KEYS[4] the config hash, KEYS[5] the reshard hash, then per write its outcome's bucket
-- hash and the previous version's outcome key
-- ARGV[1] result ttl s, ARGV[3] the shard count the letters were read by,
-- ARGV[2] the writes as JSON, oldest first:
--   [{d: dlq id, k: key hash, p: payload, o: origin, f: 0/1, s: 0/1 (superseded),
--     of: the outcome's field in its bucket,
--     out: the packed outcome (PENDING, or the superseded answer),
--     b: 1 when it goes back into a bulk stream,
--     r: the request's stream number when a reshard moved the letter, else -1}, ...]
-- Returns one word per write: the new entry id, 'superseded', 'gone' or 'answered'.
local stored = redis.call('HGET', KEYS[4], 'shards')
if redis.call('HGET', KEYS[5], 'phase') == 'switch' or (stored and stored ~= ARGV[3]) then
  return redis.error_reply('RESHARDED the shard count changed or is changing; read the letters again')
end
local ttl = tonumber(ARGV[1])
local writes = cjson.decode(ARGV[2])
local results = {}
for i, w in ipairs(writes) do
  local bucket, legacy = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local status = outcome_status(bucket, w.of, legacy)
  if #redis.call('XRANGE', KEYS[2], w.d, w.d) == 0 then
    results[i] = 'gone'
  elseif status and status ~= 'D' then
    results[i] = 'answered'
  else
    if w.s == 1 then
      results[i] = 'superseded'
    else
      local entry = {'k', w.k, 'p', w.p, 'o', w.o}
      if w.f == 1 then
        table.insert(entry, 'f')
        table.insert(entry, '1')
      end
      if w.r and w.r >= 0 then
        table.insert(entry, 'r')
        table.insert(entry, w.r)
      end
      results[i] = redis.call('XADD', KEYS[1], '*', unpack(entry))
    end
    if w.s ~= 1 and w.b == 1 then
      redis.call('HINCRBY', KEYS[3], '~bulk', 1)
      redis.call('PERSIST', KEYS[3])
    end
    store_outcome(bucket, w.of, legacy, w.out, ttl)
    redis.call('XDEL', KEYS[2], w.d)
  end
end
return results
