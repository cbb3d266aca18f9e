-- Move due tasks from the delayed zset to the work stream (Redis channel) or the outbox (Kafka
-- channel: the caller then produces their records). ZREM decides who moves each one, so two
-- workers promoting at once never publish a task twice.
-- KEYS[1] delayed zset  KEYS[2] work stream or outbox zset  KEYS[2+i] task hash of ARGV[1+i]
-- ARGV[1] 'stream' or 'outbox'   ARGV[1+i] task id
-- Returns the ids moved.
local now = now_ms()
local moved = {}
for i = 1, #ARGV - 1 do
  local id = ARGV[1 + i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    if ARGV[1] == 'outbox' then
      redis.call('ZADD', KEYS[2], now, id)
    else
      redis.call('XADD', KEYS[2], '*', 'id', id)
    end
    if redis.call('HGET', KEYS[2 + i], 'status') == 'scheduled' then
      redis.call('HSET', KEYS[2 + i], 'status', 'queued')
    end
    moved[#moved + 1] = id
  end
end
return moved
