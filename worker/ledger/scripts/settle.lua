-- Fenced: everything a cycle decided, in one atomic step. Outcomes are written before
-- the XACK + XDEL of their entries, so nothing is acknowledged before its outcome
-- exists. An outcome (a packed value in its bucket hash, lib.lua) is written only over
-- nothing or PENDING: a terminal outcome
-- (CREATED, UPDATED, FAILED) never changes and a parked one (DEAD_LETTERED) changes
-- only by a replay.
-- KEYS[1] lease, KEYS[2] stream, KEYS[3] the previous version's attempts hash (one per
-- stream), KEYS[4] dead-letter stream, then the outcome buckets, the previous version's
-- outcome keys, the attempts sub-hashes (Keys.attempts_slot) and the written-fields keys
-- the plan refers to by index.
-- ARGV: token, group, result ttl s, dead-letter ttl s, plan (JSON):
--   o: [[bucket key index, field, packed outcome, previous version's key index], ...]
--                                                          outcomes to write
--   a: [[entry id, attempts sub-hash index, field], ...]   entries to acknowledge
--   d: [[entry id, origin, key hash, payload, error, code, attempts,
--        written-fields key index, the request's stream number or -1], ...]
--                                                          entries to park
--   r: [[attempts sub-hash index, field], ...]             attempts to give back
--   w: [[written-fields key index, write id, [field, ...]], ...]  writes Marketo applied
--   b: [written-fields key index, ...]                     bulk entries settled
-- A lead with parked writes keeps, in its written-fields hash, each field a later applied
-- write set and the id of the newest such write: a replay never reverts those fields.
-- Returns -1 when the lease is not ours, else the number of outcomes written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local group, ttl, dlq_ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local plan = cjson.decode(ARGV[5])
local written = 0
for _, item in ipairs(plan.o or {}) do
  local bucket, legacy = KEYS[item[1]], KEYS[item[4]]
  local status = outcome_status(bucket, item[2], legacy)
  if not status or status == 'P' then
    store_outcome(bucket, item[2], legacy, item[3], ttl)
    written = written + 1
  end
end
if plan.d and #plan.d > 0 then
  local now = redis.call('TIME')
  local min_id = math.max(0, tonumber(now[1]) - dlq_ttl) * 1000
  for _, d in ipairs(plan.d) do
    local letter = {'entry_id', d[1], 'o', d[2], 'k', d[3], 'p', d[4], 'error', d[5],
      'code', d[6], 'attempts', d[7]}
    if d[9] and d[9] >= 0 then -- a moved letter parked again keeps its request's stream
      table.insert(letter, 'r')
      table.insert(letter, d[9])
    end
    redis.call('XADD', KEYS[4], 'MINID', '~', min_id, '*', unpack(letter))
    if d[8] > 0 then
      redis.call('HSET', KEYS[d[8]], '~parked', '1')
      -- while bulk writes of the lead wait, the record lives until the last one goes
      if redis.call('HEXISTS', KEYS[d[8]], '~bulk') == 0 then
        redis.call('EXPIRE', KEYS[d[8]], dlq_ttl)
      end
    end
  end
  redis.call('EXPIRE', KEYS[4], dlq_ttl)
end
local legacy_attempts = redis.call('EXISTS', KEYS[3]) == 1
for _, a in ipairs(plan.a or {}) do
  redis.call('XACK', KEYS[2], group, a[1])
  redis.call('XDEL', KEYS[2], a[1])
  redis.call('HDEL', KEYS[a[2]], a[3])
  if legacy_attempts then redis.call('HDEL', KEYS[3], a[1]) end
end
for _, w in ipairs(plan.w or {}) do
  local key = KEYS[w[1]]
  if redis.call('EXISTS', key) == 1 then
    for _, name in ipairs(w[3]) do
      local seen = redis.call('HGET', key, name)
      if not seen or older(seen, w[2]) then redis.call('HSET', key, name, w[2]) end
    end
  end
end
-- A lead's bulk mark counts its bulk writes still waiting; with none left (and no parked
-- write), nothing older than the applied writes remains: the record goes.
for _, i in ipairs(plan.b or {}) do
  local key = KEYS[i]
  if redis.call('HEXISTS', key, '~bulk') == 1 then
    if redis.call('HINCRBY', key, '~bulk', -1) <= 0 then
      redis.call('HDEL', key, '~bulk')
      if redis.call('HEXISTS', key, '~parked') == 1 then
        redis.call('EXPIRE', key, dlq_ttl)
      else
        redis.call('DEL', key)
      end
    end
  end
end
-- (a refund follows its count in the same cycle, which moved a previous version's counter
-- to its sub-hash: only the sub-hash is looked at)
for _, r in ipairs(plan.r or {}) do
  local part, field = KEYS[r[1]], r[2]
  local n = tonumber(redis.call('HGET', part, field))
  if n and n > 1 then
    redis.call('HINCRBY', part, field, -1)
  elseif n then
    redis.call('HDEL', part, field)
  end
end
return written
