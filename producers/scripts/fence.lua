-- The shard-count fence, prepended to the enqueue steps: an entry is written only under
-- the layout its writer placed it by. While `leadsync reshard` changes the count (its
-- hash holds the target), intake is refused for a moment (BACKPRESSURE: retryable,
-- nothing written); a writer whose count is not the stored one is told the stored one
-- (RESHARDED n) and places its records again, so a lead's writes never sit in the
-- streams of two layouts.
-- Returns nil when the layout agrees, else the refusal's text.
local function layout_refusal(config_key, reshard_key, shards)
  local target = redis.call('HGET', reshard_key, 'to')
  if target then
    return 'BACKPRESSURE resharding: the shard count is changing to ' .. target
  end
  local stored = redis.call('HGET', config_key, 'shards')
  if stored and stored ~= shards then return 'RESHARDED ' .. stored end
  return nil
end
