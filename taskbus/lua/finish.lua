-- Record the outcome of one attempt, fenced: only the consumer that still holds the entry's
-- lease, for the attempt it started, may write. A worker whose lease was reclaimed is refused.
-- KEYS[1] work stream  KEYS[2] task hash  KEYS[3] events  KEYS[4] delayed zset  KEYS[5] dead-letter stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] entry id  ARGV[4] task id  ARGV[5] attempt
-- ARGV[6] outcome: 'succeeded' | 'retry' | 'failed'   ARGV[7] result JSON (succeeded) or error JSON
-- ARGV[8] result TTL s  ARGV[9] retry delay ms  ARGV[10] pending TTL s  ARGV[11] dead-letter maxlen
-- Returns the status written, or false when fenced off.
local stream, task, group, consumer, entry = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local pending = redis.call('XPENDING', stream, group, entry, entry, 1, consumer)
if #pending == 0 then return false end
local f = redis.call('HMGET', task, 'status', 'attempts', 'type')
if f[1] ~= 'running' or f[2] ~= ARGV[5] then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('XACK', stream, group, entry)
redis.call('XDEL', stream, entry)
local status
if ARGV[6] == 'succeeded' then
  status = 'succeeded'
  redis.call('HSET', task, 'status', status, 'result', ARGV[7], 'finished_ms', now)
  redis.call('HDEL', task, 'error')
  redis.call('EXPIRE', task, ARGV[8])
elseif ARGV[6] == 'retry' then
  status = 'scheduled'
  redis.call('HSET', task, 'status', status, 'error', ARGV[7])
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[9]), ARGV[4])
  redis.call('EXPIRE', task, ARGV[10])
else
  status = 'failed'
  redis.call('HSET', task, 'status', status, 'error', ARGV[7], 'finished_ms', now)
  redis.call('EXPIRE', task, ARGV[8])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[11], '*', 'id', ARGV[4], 'type', f[3], 'attempts', f[2], 'error', ARGV[7])
end
redis.call('XADD', KEYS[3], 'MAXLEN', 8, '*', 'status', status)
redis.call('EXPIRE', KEYS[3], ARGV[8])
return status
