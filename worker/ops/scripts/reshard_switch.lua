-- The switch of `leadsync reshard`, in one atomic step (reshard_look.lua prepended): only
-- while the old layout holds no entry, no lease and no resting shard, the reshard is in
-- its switch phase and the dead letters are exactly the ones listed, each letter moves to
-- its lead's dead-letter stream in the new layout (keeping, as field r, the stream number
-- of the request id the app holds), each listed lead's written-fields record moves to
-- its new shard, and the new count is stored.
-- KEYS: as reshard_look.lua, then each letter's target dead-letter stream, then each
--       written-fields record's old and new key
-- ARGV[1] the old count, ARGV[2] the new count, ARGV[3] dead-letter ttl s, ARGV[4] JSON
--   {l: [[old stream number, dlq id, target key index, r], ...],
--    f: [[old key index, new key index], ...]}
-- Returns the look (live, bulk, letters, leases, resting) and 1 when switched, else 0.
local old = tonumber(ARGV[1])
local seen = look(old)
local plan = cjson.decode(ARGV[4])
local quiet = seen[1] + seen[2] + seen[4] + seen[5] == 0 and seen[3] == #plan.l
  and redis.call('HGET', KEYS[1], 'shards') == ARGV[1]
  and redis.call('HGET', KEYS[2], 'to') == ARGV[2]
  and redis.call('HGET', KEYS[2], 'phase') == 'switch'
local letters = {}
if quiet then
  for i, l in ipairs(plan.l) do
    local found = redis.call('XRANGE', KEYS[4 + 2 * l[1]], l[2], l[2])
    if #found == 0 then quiet = false break end
    letters[i] = found[1][2]
  end
end
if not quiet then
  table.insert(seen, 0)
  return seen
end
for _, l in ipairs(plan.l) do redis.call('XDEL', KEYS[4 + 2 * l[1]], l[2]) end
for i, l in ipairs(plan.l) do
  local fields = {}
  for j = 1, #letters[i], 2 do
    if letters[i][j] ~= 'r' then
      table.insert(fields, letters[i][j])
      table.insert(fields, letters[i][j + 1])
    end
  end
  table.insert(fields, 'r')
  table.insert(fields, l[4])
  redis.call('XADD', KEYS[l[3]], '*', unpack(fields))
  redis.call('EXPIRE', KEYS[l[3]], ARGV[3])
end
for _, f in ipairs(plan.f) do
  local from, to = KEYS[f[1]], KEYS[f[2]]
  if from ~= to and redis.call('EXISTS', from) == 1 then
    if redis.call('EXISTS', to) == 0 then
      redis.call('RENAME', from, to)
    else
      local record = redis.call('HGETALL', from)
      for j = 1, #record, 2 do
        local name, value = record[j], record[j + 1]
        local kept = redis.call('HGET', to, name)
        if string.sub(name, 1, 1) == '~' or not kept or older(kept, value) then
          redis.call('HSET', to, name, value)
        end
      end
      redis.call('DEL', from)
    end
  end
end
redis.call('HSET', KEYS[1], 'shards', ARGV[2])
redis.call('DEL', KEYS[2])
table.insert(seen, 1)
return seen
