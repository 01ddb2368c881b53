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
