-- Kafka channel, outbox sweep: take outbox ids older than ARGV[1] ms (their enqueue or promote
-- died before the broker acknowledged, or before it could say so; or, acknowledged, no worker
-- started them by KAFKA_REDELIVER_S: see kafka_mark_published.lua). Each still-queued (or throttled) one is
-- re-stamped, so one sweeper publishes it per round; the rest leave the outbox. A record that
-- did land before is harmless: the fenced start runs a task once at a time.
-- KEYS[1] outbox zset, KEYS[1+i] task hash of ARGV[1+i]   ARGV[1] age ms  ARGV[1+i] task id
-- Returns the ids to publish again.
local now = now_ms()
local out = {}
for i = 1, #ARGV - 1 do
  local id = ARGV[1 + i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now - tonumber(ARGV[1]) then
    local status = redis.call('HGET', KEYS[1 + i], 'status')
    if status == 'queued' or status == 'throttled' then  -- throttled: given its slot, or its rate time came
      redis.call('ZADD', KEYS[1], now, id)
      out[#out + 1] = id
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return out
