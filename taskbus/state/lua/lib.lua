-- Shared by every script: `state.scripts.load_script` puts it in front of each one (Lua in
-- Redis has no includes). Only functions here: a script uses what it needs.

-- The server's clock in ms: one clock for every worker and function, whatever theirs say.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- Acknowledge a stream entry and delete it: acknowledged entries never pile up, and the
-- stream is never trimmed by length (MAXLEN would delete pending entries too).
local function ack(stream, group, entry)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end

-- The one dead-letter record shape: id, type, attempts, error JSON, and for an entry that
-- names no task, the raw entry (`extra`). Unknown fields are ''.
local function dead_letter(dead, maxlen, id, type, attempts, err, extra)
  redis.call('XADD', dead, 'MAXLEN', '~', maxlen, '*', 'id', id or '', 'type', type or '',
    'attempts', attempts or '', 'error', err, 'entry', extra or '')
end

-- Take the next attempt of a task: running under `consumer`, fenced by `field` = `value`
-- (the stream entry on Redis Streams, the lease deadline on Kafka). Returns the 'run' verdict
-- {'run', type, payload, attempt, max_attempts, timeout_s} from HMGET fields
-- {status, attempts, max_attempts, type, payload, timeout_s}.
local function begin_attempt(task, f, consumer, now, field, value)
  local attempt = tonumber(f[2]) + 1
  redis.call('HSET', task, 'status', 'running', 'attempts', attempt, 'started_ms', now,
    'consumer', consumer, field, value)
  return {'run', f[4], f[5], attempt, f[3], f[6]}
end

-- The end of a task's life, after its status is written: kept for the result TTL, counted
-- (the fences let a task get here once; `terminal_writes` audits that) and announced to
-- long-polls on the task's events channel (sharded pub/sub: no memory kept).
local function terminal(task, events, status, ttl)
  redis.call('EXPIRE', task, ttl)
  redis.call('HINCRBY', task, 'terminal_writes', 1)
  redis.call('SPUBLISH', events, status)
end

-- Every attempt was started and the last one never finished: it took its worker down.
-- Fail the task and dead-letter it; returns the error JSON.
local function worker_lost(task, events, dead, ttl, maxlen, id, type, attempts, now)
  local err = cjson.encode({type = 'WorkerLost', traceback = cjson.null,
    message = 'the worker running the last attempt died or lost its lease'})
  redis.call('HSET', task, 'status', 'failed', 'error', err, 'finished_ms', now)
  dead_letter(dead, maxlen, id, type, attempts, err)
  terminal(task, events, 'failed', ttl)
  return err
end

-- A delivery whose task record is gone: dead-letter it, saying why the record may be missing.
local function task_missing(dead, maxlen, id, why)
  local err = cjson.encode({type = 'TaskMissing', message = 'task record not found (' .. why .. ')'})
  dead_letter(dead, maxlen, id, '', '', err)
end

