-- Record a task and publish it in one atomic step: never state without an entry, or the reverse.
-- KEYS[1] task hash   KEYS[2] work stream   KEYS[3] delayed zset   KEYS[4] idempotency key (optional)
-- ARGV[1] id  ARGV[2] type  ARGV[3] queue  ARGV[4] payload JSON  ARGV[5] max_attempts
-- ARGV[6] timeout_s  ARGV[7] delay_ms  ARGV[8] pending TTL s  ARGV[9] idempotency TTL s
-- Returns {id, created (1) or replayed (0), status}; a replay returns the first task's id and status.
if KEYS[4] then
  local first = redis.call('GET', KEYS[4])
  if first then return {first, 0, ''} end
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local delay = tonumber(ARGV[7])
local status = 'queued'
if delay > 0 then status = 'scheduled' end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'type', ARGV[2], 'queue', ARGV[3], 'payload', ARGV[4],
  'max_attempts', ARGV[5], 'timeout_s', ARGV[6], 'status', status, 'attempts', 0, 'created_ms', now)
redis.call('EXPIRE', KEYS[1], ARGV[8])
if delay > 0 then
  redis.call('ZADD', KEYS[3], now + delay, ARGV[1])
else
  redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
end
if KEYS[4] then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[9]) end
return {ARGV[1], 1, status}
