-- Kafka channel: undo enqueues whose record the broker did not acknowledge, so no task state
-- claims a queued task that was never published. Tasks that moved on are left alone.
-- Per task i: KEYS[3i-2] task hash, KEYS[3i-1] outbox zset, KEYS[3i] idempotency key (the task
-- hash again when there is none)   ARGV[i] task id
-- Returns how many were undone.
local undone = 0
for i = 1, #ARGV do
  local task, outbox, idem, id = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], ARGV[i]
  local f = redis.call('HMGET', task, 'status', 'attempts')
  if f[1] == 'queued' and f[2] == '0' then
    redis.call('DEL', task)
    redis.call('ZREM', outbox, id)
    if idem ~= task and redis.call('GET', idem) == id then redis.call('DEL', idem) end
    undone = undone + 1
  end
end
return undone
