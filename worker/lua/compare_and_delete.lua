-- Compare-and-delete: drop a key only while it still holds the value its owner set, so a
-- newer owner's value stays. The ledger releases a shard lease with it (value: the lease
-- token) and the REST token source drops a token lock or a refused token.
-- KEYS[1] the key; ARGV[1] the value it must hold. Returns 1 when deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
