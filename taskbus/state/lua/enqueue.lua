-- Record tasks and hand them to the channel, each in one atomic step: never state without an
-- entry, or the reverse. One call may carry several tasks of one queue (a batch); each is independent.
-- ARGV[1] the channel's target kind: 'stream' (Redis Streams: XADD the entry) or 'outbox'
--   (Kafka: ZADD the id; the caller then produces the record, and the id stays in the outbox
--   until a worker starts the task, see kafka_mark_published.lua)
-- Per task i (1-based), 4 KEYS from KEYS[4i-3]: task hash, the target (stream or outbox),
--   delayed zset, idempotency key (the task hash again when the task has none)
-- and 10 ARGV from ARGV[10i-8]: id, type, queue, payload JSON, max_attempts, timeout_s, delay_ms,
--   pending TTL s, idempotency TTL s ('' when the task has no idempotency key), the fields the
--   request left out, comma-separated ('' for none: the first start gives them the handler's defaults)
-- then, only while tracing is on, one more ARGV: the W3C traceparent of the request's `send` span,
--   kept in every task's hash (field `traceparent`) for the worker's `process` spans
-- Returns per task {id, created (1) or replayed (0), status}; a replay returns the first task's id.
local now = now_ms()
local outbox = ARGV[1] == 'outbox'
local out = {}
local traceparent = ARGV[10 * (#KEYS / 4) + 2]
for i = 1, #KEYS / 4 do
  local task, target, delayed, idem = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local a = 10 * i - 8
  local id, delay, pending_ttl, idem_ttl = ARGV[a], tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), ARGV[a + 8]
  local first = false
  if idem_ttl ~= '' then first = redis.call('GET', idem) end
  if first then
    out[i] = {first, 0, ''}
  else
    local status = 'queued'
    if delay > 0 then status = 'scheduled' end
    redis.call('HSET', task, 'id', id, 'type', ARGV[a + 1], 'queue', ARGV[a + 2], 'payload', ARGV[a + 3],
      'max_attempts', ARGV[a + 4], 'timeout_s', ARGV[a + 5], 'status', status, 'attempts', 0, 'created_ms', now)
    if ARGV[a + 9] ~= '' then redis.call('HSET', task, 'defaults', ARGV[a + 9]) end
    if traceparent then redis.call('HSET', task, 'traceparent', traceparent) end
    -- a delayed task must outlive its delay: keep it PENDING_TTL_S past its due time
    redis.call('EXPIRE', task, pending_ttl + math.ceil(delay / 1000))
    if delay > 0 then
      redis.call('ZADD', delayed, now + delay, id)
    elseif outbox then
      redis.call('ZADD', target, now, id)
    else
      redis.call('XADD', target, '*', 'id', id)
    end
    if idem_ttl ~= '' then redis.call('SET', idem, id, 'EX', idem_ttl) end
    out[i] = {id, 1, status}
  end
end
return out
