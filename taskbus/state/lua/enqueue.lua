-- Record tasks and hand them to the channel, each in one atomic step: never state without an
-- entry, or the reverse. One call may carry several tasks of one queue (a batch); each is independent.
-- ARGV[1] the channel's target kind: 'stream' (Redis Streams: XADD the entry) or 'outbox'
--   (Kafka: ZADD the id; the caller then produces the record, and the id stays in the outbox
--   until a worker starts the task, see kafka_mark_published.lua)
-- Per task i (1-based), 5 KEYS from KEYS[5i-4]: task hash, the target (stream of the task's
--   priority level, or outbox), delayed zset, idempotency key (the task hash again when the task
--   has none), the queue's set of priority levels in use
-- and 12 ARGV from ARGV[12i-10]: id, type, queue, payload JSON, max_attempts, timeout_s, delay_ms,
--   pending TTL s, idempotency TTL s ('' when the task has no idempotency key), the fields the
--   request left out, comma-separated ('' for none: the first start gives them the handler's
--   defaults), priority level ('' for the default, 5: nothing more is written), the request's
--   `concurrency_key` ('' for none: its type's limits key it by payload field or not at all)
-- then, only while tracing is on, one more ARGV: the W3C traceparent of the request's `send` span,
--   kept in every task's hash (field `traceparent`) for the worker's `process` spans
-- Returns per task {id, created (1) or replayed (0), status}; a replay returns the first task's id.
local now = now_ms()
local outbox = ARGV[1] == 'outbox'
local out = {}
local traceparent = ARGV[12 * (#KEYS / 5) + 2]
for i = 1, #KEYS / 5 do
  local task, target, delayed, idem, levels = KEYS[5 * i - 4], KEYS[5 * i - 3], KEYS[5 * i - 2], KEYS[5 * i - 1],
    KEYS[5 * i]
  local a = 12 * i - 10
  local id, idem_ttl = ARGV[a], ARGV[a + 8]
  local first = false
  if idem_ttl ~= '' then first = redis.call('GET', idem) end
  if first then
    out[i] = {first, 0, ''}
  else
    local status = record_task(task, target, delayed, outbox, now, ARGV, a, levels)
    if traceparent then redis.call('HSET', task, 'traceparent', traceparent) end
    if idem_ttl ~= '' then redis.call('SET', idem, id, 'EX', idem_ttl) end
    out[i] = {id, 1, status}
  end
end
return out
