-- Pause or resume a stored schedule (an operator's action). While paused, its due slots pass
-- unfired (schedule_fire.lua advances past them); a resume starts from the next slot.
-- KEYS[1] the schedule hash
-- ARGV[1] '1' pause, '0' resume; ARGV[2] the actor
-- Returns 0 when the schedule does not exist, else 1
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now = now_ms()
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'paused', cjson.encode({by = ARGV[2], at_ms = now}))
else
  redis.call('HDEL', KEYS[1], 'paused')
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_s')) or 0
  redis.call('HSET', KEYS[1], 'last_s', math.max(last, math.floor(now / 1000)))
end
return 1
