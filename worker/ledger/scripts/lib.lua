-- Prepended to every step of the ledger (scripts/*.lua). Stream ids order as (ms, seq) numbers, as
-- producers.contract.entry_order does in Python.
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
-- The status letter of a stored outcome (P, C, U, F or D; producers.outcome.Outcome.pack):
-- its field in the bucket hash, else the previous version's hash per request. nil: none.
local function outcome_status(bucket, field, legacy)
  local value = redis.call('HGET', bucket, field) or redis.call('HGET', legacy, 'status')
  if value then return string.sub(value, 1, 1) end
  return nil
end
-- Store a packed outcome: the bucket lives ttl after its last write (never less), and a
-- hash the previous version wrote for the request goes.
local function store_outcome(bucket, field, legacy, value, ttl)
  redis.call('HSET', bucket, field, value)
  if redis.call('TTL', bucket) < ttl then redis.call('EXPIRE', bucket, ttl) end
  redis.call('DEL', legacy)
end
