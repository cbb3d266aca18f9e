-- Shared by every script: `keys.load_script` puts it in front of each one (Lua in Redis has
-- no includes). Only functions here: a script uses what it needs.

-- The server's clock in ms: one clock for every worker and function, whatever theirs say.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
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
  redis.call('XADD', dead, 'MAXLEN', '~', maxlen, '*', 'id', id, 'type', type, 'attempts', attempts, 'error', err)
  terminal(task, events, 'failed', ttl)
  return err
end

-- A delivery whose task record is gone: dead-letter it, saying why the record may be missing.
local function task_missing(dead, maxlen, id, why)
  local err = cjson.encode({type = 'TaskMissing', message = 'task record not found (' .. why .. ')'})
  redis.call('XADD', dead, 'MAXLEN', '~', maxlen, '*', 'id', id, 'error', err)
end

