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
--@ commit
-- KEYS[1] stream, KEYS[2] attempts hash, then per entry: outcome key, latest-state key
-- ARGV: group, ttl s, then per entry: entry id, write-latest flag (1/0), field count, field/value pairs
-- Outcomes first, then XACK + XDEL: all in one script, so nothing is acknowledged
-- before its outcome exists. An outcome that is already final is kept, and the
-- latest state of a lead only moves to a newer entry.
local group, ttl = ARGV[1], tonumber(ARGV[2])
local i, written = 3, 0
for k = 3, #KEYS, 2 do
  local outcome_key, latest_key = KEYS[k], KEYS[k + 1]
  local entry_id, write_latest, nfields = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fields = {}
  for j = 0, nfields - 1 do
    fields[#fields + 1] = ARGV[i + 3 + 2 * j]
    fields[#fields + 1] = ARGV[i + 4 + 2 * j]
  end
  i = i + 3 + 2 * nfields
  local status = redis.call('HGET', outcome_key, 'status')
  if not status or status == 'PENDING' or status == 'DEAD_LETTERED' then
    redis.call('DEL', outcome_key)
    redis.call('HSET', outcome_key, unpack(fields))
    redis.call('EXPIRE', outcome_key, ttl)
    written = written + 1
  end
  if write_latest == '1' then
    local seen = redis.call('HGET', latest_key, 'entry_id')
    local newer = true
    if seen then
      local sm, ss = string.match(seen, '(%d+)-(%d+)')
      local em, es = string.match(entry_id, '(%d+)-(%d+)')
      sm, ss, em, es = tonumber(sm), tonumber(ss), tonumber(em), tonumber(es)
      newer = em > sm or (em == sm and es >= ss)
    end
    if newer then
      redis.call('DEL', latest_key)
      redis.call('HSET', latest_key, 'entry_id', entry_id, unpack(fields))
      redis.call('EXPIRE', latest_key, ttl)
    end
  end
  redis.call('XACK', KEYS[1], group, entry_id)
  redis.call('XDEL', KEYS[1], entry_id)
  redis.call('HDEL', KEYS[2], entry_id)
end
return written
--@ dead_letter
-- KEYS[1] stream, KEYS[2] dlq stream, KEYS[3] attempts hash, KEYS[4] outcome key
-- ARGV: group, entry id, key hash, payload, error, code, attempts, ttl, outcome field/value pairs
local entry_id = ARGV[2]
redis.call('XADD', KEYS[2], '*', 'entry_id', entry_id, 'k', ARGV[3], 'p', ARGV[4],
  'error', ARGV[5], 'code', ARGV[6], 'attempts', ARGV[7])
redis.call('DEL', KEYS[4])
local fields = {}
for j = 9, #ARGV do fields[#fields + 1] = ARGV[j] end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[8]))
redis.call('XACK', KEYS[1], ARGV[1], entry_id)
redis.call('XDEL', KEYS[1], entry_id)
redis.call('HDEL', KEYS[3], entry_id)
return 1
