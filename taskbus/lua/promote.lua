-- Move due tasks from the delayed zset to the work stream. ZREM decides who moves each one,
-- so two workers promoting at once never publish a task twice.
-- KEYS[1] delayed zset  KEYS[2] work stream  KEYS[2+i] task hash of ARGV[i]
-- ARGV[i] task id
-- Returns how many were moved.
local moved = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'id', ARGV[i])
    if redis.call('HGET', KEYS[2 + i], 'status') == 'scheduled' then
      redis.call('HSET', KEYS[2 + i], 'status', 'queued')
    end
    moved = moved + 1
  end
end
return moved
