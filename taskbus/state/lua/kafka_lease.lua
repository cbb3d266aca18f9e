-- Kafka channel: renew (or, with a negative lease, hand back) the leases of running tasks. Only
-- the consumer that started the attempt, for that attempt, while it still runs, may renew it.
-- KEYS[i] task hash   ARGV[1] consumer  ARGV[2] lease ms  ARGV[2+i] attempt of task i
-- Returns the positions (1-based) of tasks this consumer no longer holds.
local now = now_ms()
local lost = {}
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'status', 'attempts', 'consumer')
  if f[1] == 'running' and f[2] == ARGV[2 + i] and f[3] == ARGV[1] then
    redis.call('HSET', KEYS[i], 'lease_ms', now + tonumber(ARGV[2]))
  else
    lost[#lost + 1] = i
  end
end
return lost
