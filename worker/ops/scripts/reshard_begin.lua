-- Hold `leadsync reshard`: start it (store the target and the phase), renew it, or move
-- it to the next phase. The hash lives ARGV[4] ms unless renewed, so a command that dies
-- never leaves intake refused; once it is gone (lapsed, or given up with --abort) a
-- renewal fails and the command stops.
-- KEYS[1] the reshard hash
-- ARGV[1] the target count, ARGV[2] the phase (freeze or switch), ARGV[3] start, renew
-- or move, ARGV[4] ttl ms
-- Returns {1, phase} while this command holds the reshard, {0, another target} when
-- another reshard is under way, {0, ''} when it is gone.
local target = redis.call('HGET', KEYS[1], 'to')
if target and target ~= ARGV[1] then
  return {0, target}
end
if not target then
  if ARGV[3] ~= 'start' then return {0, ''} end
  redis.call('HSET', KEYS[1], 'to', ARGV[1], 'phase', ARGV[2])
elseif ARGV[3] == 'move' then
  redis.call('HSET', KEYS[1], 'phase', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, redis.call('HGET', KEYS[1], 'phase')}
