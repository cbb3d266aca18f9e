-- Record the outcomes of a batch of attempts (both channels). Each write is fenced: only the
-- consumer that started the attempt, for that attempt, while the task is still running, may
-- write. A worker whose lease was reclaimed (the reclaimer's start bumped attempts and took
-- `consumer`) is refused. A task with a cancel request ends `cancelled` whatever its handler
-- did (the request was recorded first: cancel and finish never both win).
-- KEYS[1] work stream  KEYS[2] delayed zset  KEYS[3] dead-letter stream  KEYS[4] stats hash
--   KEYS[5] recently finished stream  KEYS[6] cancel requests set
--   KEYS[7..10] flow control: slot holders, slots held, throttled zset, rates (limits.lua `L`): an
--   attempt that ends (a retry too: it competes again) releases its slot to the slot's head waiter
--   then per item i: KEYS[9+2i] task hash, KEYS[10+2i] events channel (sharded pub/sub)
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] result TTL s  ARGV[4] pending TTL s  ARGV[5] dead-letter maxlen
--   ARGV[6] recently finished maxlen
--   then per item i (6 each, from ARGV[6i+1]): stream entry id to acknowledge ('' for none: the
--   Kafka channel commits the record's offset instead), task id, attempt,
--   outcome ('succeeded' | 'retry' | 'failed' | 'cancelled': the worker gave up on a cancelled
--   handler after CANCEL_GRACE_S), result JSON or error JSON, retry delay ms
-- Returns per item the status written, or false when fenced off. The entries of the writes
-- that pass their fence are acknowledged together, in one XACK and one XDEL.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
Q.stats, Q.recent, Q.cancels, Q.recent_max = KEYS[4], KEYS[5], KEYS[6], tonumber(ARGV[6])
L.holders, L.held, L.waiting, L.rates = KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local now = now_ms()
local acked = {}
local out = {}
for i = 1, (#KEYS - 10) / 2 do
  local task, events = KEYS[9 + 2 * i], KEYS[10 + 2 * i]
  local a = 6 * i + 1
  local entry, id, attempt, outcome, body, delay_ms = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
    tonumber(ARGV[a + 5])
  -- only the fields every outcome needs; the rare paths (retry, failure, cancel) read theirs
  local f = redis.call('HMGET', task, 'status', 'attempts', 'consumer', 'terminal_writes', 'cancel_requested_ms',
    'slot')
  if f[2] == attempt and f[3] == consumer and f[1] ~= 'running' and f[1] ~= 'queued' then
    out[i] = f[1]  -- a retried call whose first try landed (its reply was lost): idempotent
  elseif f[1] ~= 'running' or f[2] ~= attempt or f[3] ~= consumer then
    out[i] = false
  else
    if entry ~= '' then acked[#acked + 1] = entry end
    if f[6] then  -- a limited type's slot (Kafka: its waiter goes through the delayed zset)
      L.target, L.kind = entry ~= '' and stream or KEYS[2], entry ~= '' and 'stream' or 'delayed'
      release_slot(id)
      redis.call('HDEL', task, 'slot')
    end
    local writes = (tonumber(f[4]) or 0) + 1  -- `terminal`'s count, in the same HSET
    if f[5] or outcome == 'cancelled' then
      local more = redis.call('HMGET', task, 'cancel_by', 'started_ms')
      if outcome ~= 'cancelled' then  -- what the handler did, kept in the history
        record_attempt(task, attempt, consumer, more[2], now, outcome == 'retry' and 'failed' or outcome,
          outcome ~= 'succeeded' and body or nil)
      end
      local err = cjson.encode({type = 'Cancelled', traceback = cjson.null,
        message = 'cancelled while running (by ' .. (more[1] or 'the worker') .. ')'})
      redis.call('HSET', task, 'status', 'cancelled', 'error', err, 'finished_ms', now, 'terminal_writes', writes)
      announce(task, events, 'cancelled', ARGV[3], id)
      out[i] = 'cancelled'
    elseif outcome == 'succeeded' then
      redis.call('HSET', task, 'status', 'succeeded', 'result', body, 'finished_ms', now, 'error', '',
        'terminal_writes', writes)
      announce(task, events, 'succeeded', ARGV[3], id)
      out[i] = 'succeeded'
    elseif outcome == 'retry' then  -- not announced: long-polls wait for terminal states only
      record_attempt(task, attempt, consumer, redis.call('HGET', task, 'started_ms'), now, 'retried', body)
      redis.call('HSET', task, 'status', 'scheduled', 'error', body)
      redis.call('ZADD', KEYS[2], now + delay_ms, id)
      redis.call('EXPIRE', task, ARGV[4])
      out[i] = 'scheduled'
    else
      redis.call('HSET', task, 'status', 'failed', 'error', body, 'finished_ms', now, 'terminal_writes', writes)
      dead_letter(KEYS[3], ARGV[5], id, redis.call('HGET', task, 'type'), f[2], body, nil, task)
      announce(task, events, 'failed', ARGV[3], id)
      out[i] = 'failed'
    end
  end
end
ack_all(stream, group, acked)
flush_tally(now)
return out
