-- The layout fence, prepended to the enqueue steps: an entry is written only under the
-- layout its writer placed it by, its shard count and its key rule. While `leadsync
-- reshard` changes the count (its hash holds the target), intake is refused for a moment
-- (BACKPRESSURE: retryable, nothing written); a writer whose count is not the stored one
-- is told the stored one (RESHARDED n), and one whose key rule (how a lead's key is made:
-- under REST the lookup field's value) is not the rule a worker stored is told that rule
-- (REKEYED rule); it places its records again, so a lead's writes never sit under two
-- layouts or two keys.
-- Returns nil when the layout agrees, else the refusal's text.
local function layout_refusal(config_key, reshard_key, shards, rule)
  local target = redis.call('HGET', reshard_key, 'to')
  if target then
    return 'BACKPRESSURE resharding: the shard count is changing to ' .. target
  end
  local stored = redis.call('HGET', config_key, 'shards')
  if stored and stored ~= shards then return 'RESHARDED ' .. stored end
  local stored_rule = redis.call('HGET', config_key, 'key_rule')
  if stored_rule and stored_rule ~= rule then return 'REKEYED ' .. stored_rule end
  return nil
end
