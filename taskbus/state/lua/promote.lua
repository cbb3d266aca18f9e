-- Move due tasks from the delayed zset to the work stream of their priority level (Redis
-- channel) or the outbox (Kafka channel: the caller then produces their records). ZREM decides
-- who moves each one, so two workers promoting at once never publish a task twice. A delayed
-- task, a retry, a deferral keep their level: it is read from the task hash (`priority`, absent
-- for the default 5), and a non-default level is recorded again in the queue's set of levels
-- (workers may have dropped it from there while its stream was empty, see levels.lua).
-- KEYS[1] delayed zset  KEYS[2] the queue's set of priority levels in use (Kafka: any key, unused)
--   KEYS[3..2+L] the targets: L = 1, the one target of every task (the outbox, or the stream),
--   or L = 10, the work streams of levels 0-9 (KEYS[3 + level])
--   then KEYS[2+L+i] task hash of ARGV[2+i]
-- ARGV[1] 'stream' or 'outbox'  ARGV[2] L  ARGV[2+i] task id
-- Returns the ids moved.
local now = now_ms()
local moved = {}
local l = tonumber(ARGV[2])
for i = 1, #ARGV - 2 do
  local id, task = ARGV[2 + i], KEYS[2 + l + i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local f = redis.call('HMGET', task, 'status', 'priority')
    if ARGV[1] == 'outbox' then
      redis.call('ZADD', KEYS[3], now, id)
    elseif l == 1 then
      redis.call('XADD', KEYS[3], '*', 'id', id)
    else
      if f[2] then redis.call('SADD', KEYS[2], f[2]) end
      redis.call('XADD', KEYS[3 + (tonumber(f[2]) or 5)], '*', 'id', id)
    end
    if f[1] == 'scheduled' then
      redis.call('HSET', task, 'status', 'queued')
    end
    moved[#moved + 1] = id
  end
end
return moved
