-- Count one request in a fixed window: the first request of the window sets its expiry.
-- KEYS[1] the window's counter; ARGV[1] its expiry in milliseconds. Returns the count.
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return c
