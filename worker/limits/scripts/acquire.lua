-- One atomic admission step for a Marketo call, shared by every worker pod.
--
-- Checks, in order: a master change (failover.lua, prepended: the window may have been
-- rolled back, so it counts as full for one window) > hold > cooldown > daily quota >
-- pace > sliding-window rate > even spacing > concurrency slot. Nothing is written unless every check passes; then the
-- call takes a window entry, a quota count, its spacing turn and a slot together (and,
-- while on hold, the probe turn).
--
-- Time is Redis's own clock (TIME), so every pod decides on one clock whatever its
-- own says; a test may pass its clock in ARGV[1] instead. Key TTLs are only garbage
-- collection: decisions use the times stored in the values.
--
-- KEYS[1] window    ZSET token -> call time
-- KEYS[2] slots     ZSET slot member -> slot expiry
-- KEYS[3] quota     counter of calls in the current quota day
-- KEYS[4] cooldown  HASH until, reason
-- KEYS[5] hold      HASH reason, since, next_probe
-- KEYS[6] spacing   theoretical time of the next evenly spaced grant (GCRA)
-- KEYS[7] failover  HASH run_id, changed_at (failover.lua)
--
-- ARGV: now ('' for Redis TIME), token, slot_member, probe (0/1), rate_calls, window_s,
--       max_slots, slot_ttl_s, quota_limit, reset_at (Unix s of the next quota reset),
--       probe_interval_s, concurrency_retry_s, min_retry_s, gc_margin_s,
--       paced (0/1: a partial batch), day_length_s (of this quota day), pace_burst_calls,
--       rate_burst_calls, failover_quiet_s
--
-- Returns {1, 1 if the hold's probe turn was taken else 0, now} when granted, else
-- {0, reason, retry_after_s, now}; numbers as strings (Lua numbers would be truncated to
-- integers on the way back). ``now`` lets the caller name the quota day on this clock.

-- (now: from now.lua, prepended)
local token = ARGV[2]
local slot_member = ARGV[3]
local probe = ARGV[4] == '1'
local rate_calls = tonumber(ARGV[5])
local window_s = tonumber(ARGV[6])
local max_slots = tonumber(ARGV[7])
local slot_ttl_s = tonumber(ARGV[8])
local quota_limit = tonumber(ARGV[9])
local reset_in_s = math.max(tonumber(ARGV[10]) - now, 1)
local probe_interval_s = tonumber(ARGV[11])
local concurrency_retry_s = tonumber(ARGV[12])
local min_retry_s = tonumber(ARGV[13])
local gc_margin_s = tonumber(ARGV[14])
local paced = ARGV[15] == '1'
local day_length_s = tonumber(ARGV[16])
local pace_burst = tonumber(ARGV[17])
local rate_burst = tonumber(ARGV[18])
local failover_quiet = tonumber(ARGV[19])

local function deny(reason, retry_s)
  return {0, reason, string.format('%.6f', math.max(retry_s, min_retry_s)),
    string.format('%.6f', now)}
end

local function ttl_ms(seconds)
  return math.ceil((seconds + gc_margin_s) * 1000)
end

-- a master change: calls counted on the old master may be lost with it
local quiet = failover_quiet_s(KEYS[7], failover_quiet)
if quiet > 0 then
  return deny('failover', quiet)
end

-- hold: nothing goes out except one probe per interval, cluster-wide
local probe_taken = false
if redis.call('EXISTS', KEYS[5]) == 1 then
  local next_probe = tonumber(redis.call('HGET', KEYS[5], 'next_probe')) or now
  if not probe or now < next_probe then
    return deny('hold', next_probe - now)
  end
  probe_taken = true
end

-- cooldown after 20023 / 20024
local cooldown_until = tonumber(redis.call('HGET', KEYS[4], 'until'))
if cooldown_until and now < cooldown_until then
  return deny('cooldown', cooldown_until - now)
end

-- daily quota (20015 sets the counter to the limit)
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
if used >= quota_limit then
  return deny('quota', reset_in_s)
end

-- pace: a partial batch goes only while the day's calls stay under a line rising from
-- pace_burst at 00:00 to quota_limit + pace_burst at the reset, so the share lasts the
-- day (full batches are the best use of a call and skip this check). Mirrors
-- pace_wait_s in limits.py.
if paced then
  local day_start = tonumber(ARGV[10]) - day_length_s
  local allowed = quota_limit * (now - day_start) / day_length_s + pace_burst
  if used + 1 > allowed then
    return deny('pace', day_start + (used + 1 - pace_burst) * day_length_s / quota_limit - now)
  end
end

-- sliding window: at most rate_calls calls in any window_s seconds
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window_s)
if redis.call('ZCARD', KEYS[1]) >= rate_calls then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return deny('rate', tonumber(oldest[2]) + window_s - now)
end

-- even spacing (GCRA): one grant per window_s / rate_calls on average, at most
-- rate_burst back to back after a quiet spell. Marketo counts calls as they arrive, so
-- a burst that fills the window at once leaves every later call waiting for the whole
-- window; spaced grants keep the calls flowing at the full rate. The sliding window
-- above stays the hard bound.
local interval = window_s / rate_calls
local tat = math.max(tonumber(redis.call('GET', KEYS[6])) or 0, now)
local grant_at = tat - (rate_burst - 1) * interval
if now < grant_at then
  return deny('rate', grant_at - now)
end

-- concurrency: expired slots belong to dead holders and free themselves
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= max_slots then
  return deny('concurrency', concurrency_retry_s)
end

-- every check passed: take window entry, quota count and slot together
redis.call('ZADD', KEYS[1], now, token)
redis.call('PEXPIRE', KEYS[1], ttl_ms(window_s))
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ttl_ms(reset_in_s))
redis.call('SET', KEYS[6], string.format('%.6f', tat + interval), 'PX', ttl_ms(tat + interval - now))
redis.call('ZADD', KEYS[2], now + slot_ttl_s, slot_member)
redis.call('PEXPIRE', KEYS[2], ttl_ms(slot_ttl_s))
if probe_taken then
  redis.call('HSET', KEYS[5], 'next_probe', string.format('%.6f', now + probe_interval_s))
  return {1, 1, string.format('%.6f', now)}
end
return {1, 0, string.format('%.6f', now)}
