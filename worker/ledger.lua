--@ _lib
-- Prepended to every step below. Stream ids order as (ms, seq) numbers, as
-- producers.contract.entry_order does in Python.
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
--@ renew_lease
-- KEYS[1] lease; ARGV[1] token, ARGV[2] ttl ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
--@ release_lease
-- KEYS[1] lease; ARGV[1] token
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
--@ claim
-- Fenced: only the lease holder reads. Renews the lease, claims pending entries from
-- the cursor on (any consumer's: a crashed holder's entries come back), and reads
-- never-delivered entries ONLY once every pending entry has been claimed: a newer
-- write must never go out before an older pending write of the same lead.
-- KEYS[1] lease, KEYS[2] stream
-- ARGV: token, lease ttl ms, group, consumer, cursor ('0-0' to start, 'done' once the
--       pending list was walked), count
-- Returns {-1} when the lease is not ours, else {1, cursor, entries}.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
--@ bump_attempts
-- Fenced: count one more call for each entry before it is sent (a crash counts too).
-- KEYS[1] lease, KEYS[2] attempts hash; ARGV: token, entry ids...
-- Returns {-1} when the lease is not ours, else {1, count per entry...}.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local counts = {1}
for j = 2, #ARGV do counts[#counts + 1] = redis.call('HINCRBY', KEYS[2], ARGV[j], 1) end
return counts
--@ settle
-- Fenced: everything a cycle decided, in one atomic step. Outcomes are written before
-- the XACK + XDEL of their entries, so nothing is acknowledged before its outcome
-- exists. An outcome is written only over nothing or PENDING: a terminal outcome
-- (CREATED, UPDATED, FAILED) never changes and a parked one (DEAD_LETTERED) changes
-- only by a replay.
-- KEYS[1] lease, KEYS[2] stream, KEYS[3] attempts hash, KEYS[4] dead-letter stream,
-- then the outcome and newest-id keys the plan refers to by index.
-- ARGV: token, group, result ttl s, dead-letter ttl s, plan (JSON):
--   o: [[outcome key index, [field, value, ...]], ...]   outcomes to write
--   a: [entry id, ...]                                     entries to acknowledge
--   d: [[entry id, origin, key hash, payload, error, code, attempts, newest key index], ...]
--   r: [entry id, ...]                                     attempts to give back
-- Returns -1 when the lease is not ours, else the number of outcomes written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local group, ttl, dlq_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local plan = cjson.decode(ARGV[5])
local written = 0
for _, item in ipairs(plan.o or {}) do
  local key = KEYS[item[1]]
  local status = redis.call('HGET', key, 'status')
  if not status or status == 'PENDING' then
    redis.call('DEL', key)
    redis.call('HSET', key, unpack(item[2]))
    redis.call('EXPIRE', key, ttl)
    written = written + 1
  end
end
if plan.d and #plan.d > 0 then
  local now = redis.call('TIME')
  local min_id = math.max(0, tonumber(now[1]) - dlq_ttl) * 1000
  for _, d in ipairs(plan.d) do
    redis.call('XADD', KEYS[4], 'MINID', '~', min_id, '*', 'entry_id', d[1], 'o', d[2],
      'k', d[3], 'p', d[4], 'error', d[5], 'code', d[6], 'attempts', d[7])
    if d[8] > 0 then
      -- A replay compares with the newest id: keep it as long as the dead letter.
      local newest_key = KEYS[d[8]]
      local newest = redis.call('GET', newest_key)
      if not newest or older(newest, d[1]) then newest = d[1] end
      local left = redis.call('TTL', newest_key)
      redis.call('SET', newest_key, newest, 'EX', math.max(dlq_ttl, left))
    end
  end
  redis.call('EXPIRE', KEYS[4], dlq_ttl)
end
for _, entry_id in ipairs(plan.a or {}) do
  redis.call('XACK', KEYS[2], group, entry_id)
  redis.call('XDEL', KEYS[2], entry_id)
  redis.call('HDEL', KEYS[3], entry_id)
end
for _, entry_id in ipairs(plan.r or {}) do
  local n = tonumber(redis.call('HGET', KEYS[3], entry_id))
  if n and n > 1 then
    redis.call('HINCRBY', KEYS[3], entry_id, -1)
  elseif n then
    redis.call('HDEL', KEYS[3], entry_id)
  end
end
return written
--@ replay
-- Put one dead letter back, atomically. It goes back only while its request is still
-- parked, and (unless forced) only when no newer upsert of the lead was enqueued since:
-- replaying it then would overwrite newer values.
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] the original request's outcome,
-- KEYS[4] the lead's newest-id key
-- ARGV: dlq id, dead entry id, key hash, payload, origin id, result ttl s, force (1/0),
--       newest ttl s (0: not a dedup upsert), then PENDING outcome field/value pairs
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then return 'gone' end
local status = redis.call('HGET', KEYS[3], 'status')
if status and status ~= 'DEAD_LETTERED' then return 'answered' end
local newest_ttl = tonumber(ARGV[8])
if ARGV[7] ~= '1' and newest_ttl > 0 then
  local newest = redis.call('GET', KEYS[4])
  if newest and older(ARGV[2], newest) then return 'superseded' end
end
local id = redis.call('XADD', KEYS[1], '*', 'k', ARGV[3], 'p', ARGV[4], 'o', ARGV[5])
if newest_ttl > 0 then redis.call('SET', KEYS[4], id, 'EX', newest_ttl) end
local fields = {}
for j = 9, #ARGV do fields[#fields + 1] = ARGV[j] end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
redis.call('XDEL', KEYS[2], ARGV[1])
return id
