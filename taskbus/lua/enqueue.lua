-- Record tasks and publish them, each in one atomic step: never state without an entry, or the
-- reverse. One call may carry several tasks of one queue (a batch); each is independent.
-- ARGV[1] 'stream' (Redis channel: XADD the entry) or 'outbox' (Kafka channel: the caller produces
--   the record, and the id waits in the outbox zset until the broker acknowledged it)
-- Per task i (0-based), 4 KEYS from KEYS[4i+1]: task hash, work stream or outbox, delayed zset,
--   idempotency key (a placeholder when ARGV[9i+10] is '')
-- and 9 ARGV from ARGV[9i+2]: id, type, queue, payload JSON, max_attempts, timeout_s, delay_ms,
--   pending TTL s, idempotency TTL s ('' when the task has no idempotency key)
-- Returns per task {id, created (1) or replayed (0), status}; a replay returns the first task's id.
local now = now_ms()
local outbox = ARGV[1] == 'outbox'
local out = {}
for i = 0, #KEYS / 4 - 1 do
  local k, a = 4 * i, 9 * i + 1
  local first = false
  if ARGV[a + 9] ~= '' then first = redis.call('GET', KEYS[k + 4]) end
  if first then
    out[i + 1] = {first, 0, ''}
  else
    local delay = tonumber(ARGV[a + 7])
    local status = 'queued'
    if delay > 0 then status = 'scheduled' end
    redis.call('HSET', KEYS[k + 1], 'id', ARGV[a + 1], 'type', ARGV[a + 2], 'queue', ARGV[a + 3],
      'payload', ARGV[a + 4], 'max_attempts', ARGV[a + 5], 'timeout_s', ARGV[a + 6], 'status', status,
      'attempts', 0, 'created_ms', now)
    -- a delayed task must outlive its delay: keep it PENDING_TTL_S past its due time
    redis.call('EXPIRE', KEYS[k + 1], tonumber(ARGV[a + 8]) + math.ceil(delay / 1000))
    if delay > 0 then
      redis.call('ZADD', KEYS[k + 3], now + delay, ARGV[a + 1])
    elseif outbox then
      redis.call('ZADD', KEYS[k + 2], now, ARGV[a + 1])
    else
      redis.call('XADD', KEYS[k + 2], '*', 'id', ARGV[a + 1])
    end
    if ARGV[a + 9] ~= '' then redis.call('SET', KEYS[k + 4], ARGV[a + 1], 'EX', ARGV[a + 9]) end
    out[i + 1] = {ARGV[a + 1], 1, status}
  end
end
return out
