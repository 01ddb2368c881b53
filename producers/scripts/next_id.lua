-- The next entry id of a shard, prepended to the enqueue steps: one sequence across the
-- shard's two streams (live and bulk), kept in seq_key, so that ids of the two lanes
-- compare as the writes' order (the worker orders a lead's writes across lanes by id).
-- Redis's clock, never below the last id given (a failover to a replica whose clock is
-- behind keeps the order). An XADD refused because the stream already holds a later id
-- (entries written before the sequence existed) takes '*' instead.
local function xadd_next(stream, seq_key, ...)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local id = string.format('%.0f-0', ms)
  local last = redis.call('GET', seq_key)
  if last then
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
    if last_ms and tonumber(last_ms) >= ms then
      id = last_ms .. '-' .. string.format('%.0f', tonumber(last_seq) + 1)
    end
  end
  local added = redis.pcall('XADD', stream, id, ...)
  if type(added) == 'table' and added.err then
    added = redis.call('XADD', stream, '*', ...)
  end
  redis.call('SET', seq_key, added)
  return added
end

-- A bulk write of a lead marks the lead's written-fields hash while it waits: every live
-- write of the lead applied meanwhile then records the fields it set, and the bulk write
-- (older) never sends those again (worker/core/newer_fields.py).
local function mark_bulk(fields_key)
  redis.call('HINCRBY', fields_key, '~bulk', 1)
  redis.call('PERSIST', fields_key)
end
