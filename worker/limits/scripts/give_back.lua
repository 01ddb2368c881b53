-- A turn given back unused (its call never left): the window entry, the quota count and
-- the slot go together, so leadsync counts only calls Marketo saw. Only a turn still
-- holding its slot can be given back (a released or expired one may have been sent).
-- The spacing turn stays taken, so the grants after it stay spaced.
-- KEYS[1] window, KEYS[2] slots, KEYS[3] quota counter of the day the turn was taken
-- ARGV[1] token, ARGV[2] slot member, ARGV[3] quota limit (a counter 20015 set to the
-- limit stays there: Marketo said the day is spent)
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used > 0 and used < tonumber(ARGV[3]) then
  redis.call('DECR', KEYS[3])
end
return 1
