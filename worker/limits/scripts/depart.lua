-- A granted call is leaving now: its window entry takes the time of departure instead of
-- the time of the grant. Marketo counts a call when it arrives, and a call held up
-- between its grant and its send (a slow event loop, signing a large body, a loaded
-- machine) would otherwise arrive later than the window believes, letting a call granted
-- one window after it arrive less than a window after it (bench backfill saw 101 calls
-- in Marketo's 20 s window). An entry never moves earlier, and one already gone (given
-- back) is not added.
-- KEYS[1] window ZSET token -> call time
-- ARGV: now ('' for Redis TIME), token
-- (now: from now.lua, prepended)
local current = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]))
if current and current < now then
  redis.call('ZADD', KEYS[1], 'XX', now, ARGV[2])
end
return 1
