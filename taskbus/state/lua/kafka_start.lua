-- Kafka channel: mark the tasks of a batch of delivered records running. Kafka has no per-record
-- pending list to fence with, so the task hash carries the lease: `lease_ms` (server clock),
-- renewed by the running worker's heartbeat. A record of a task another worker holds under a live
-- lease (a duplicate record, or a redelivery after a rebalance while its first worker still runs
-- it) is 'busy': the caller keeps its offset uncommitted and asks again when the lease may end.
-- Every task but a busy one leaves the outbox, where it waited to be published again if never started.
-- KEYS[1] dead-letter stream  KEYS[2] outbox zset  KEYS[3] delayed zset  KEYS[4] workers hash
--   KEYS[5] stats hash  KEYS[6] recently finished stream  KEYS[7] cancel requests set  KEYS[8] paused flag
--   KEYS[9..12] flow control: slot holders, slots held, throttled zset, rates (limits.lua `L`; a slot
--   released here goes to its next waiter through the delayed zset, then the outbox)
--   then per task i: KEYS[11+2i] task hash, KEYS[12+2i] events channel
-- ARGV[1] consumer  ARGV[2] result TTL s  ARGV[3] dead-letter maxlen  ARGV[4] lease ms
--   ARGV[5] this worker's handler table (JSON, see handler_of)  ARGV[6] unknown-type grace ms
--   ARGV[7] ms a worker counts as live after it was last seen  ARGV[8] longest deferral ms
--   ARGV[9] recently finished maxlen
--   then per task i: ARGV[8+2i] task id, ARGV[9+2i] '1' when this consumer may take back a task
--   recorded as running under its own name (the reply to its start was lost)
-- Returns per task one of:
--   {'run', type, payload, attempt, max_attempts, timeout_s, traceparent (nil when the task has none)}
--   {'busy', ms until the holder's lease ends}
--   {'done', status, type, attempts, error}  terminal, or owned by the delay schedule: not run
--                 (a running task with a cancel request whose lease ended is cancelled now)
--   {'deferred'}  this worker has no handler for its type, or the queue is paused: back in the
--                 delayed zset, still queued (a paused queue's tasks are offered again every second)
--   {'throttled', reason[, wait ms]}  held back by its type's concurrency or rate limit (limits.lua
--                 `admit`): it leaves the partition (commit the offset) and comes back through the
--                 delayed zset and the outbox, no attempt spent
--   {'dead', reason[, type, attempts, error]}  dead-lettered now: task record missing, the last
--                 attempt died with its worker, or no live worker has a handler for its type
local dead, outbox, delayed, workers, consumer = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
Q.stats, Q.recent, Q.cancels, Q.recent_max = KEYS[5], KEYS[6], KEYS[7], tonumber(ARGV[9])
local paused = redis.call('EXISTS', KEYS[8]) == 1
L.holders, L.held, L.waiting, L.rates, L.target, L.kind = KEYS[9], KEYS[10], KEYS[11], KEYS[12], delayed, 'delayed'
local handlers = cjson.decode(ARGV[5])
local unknown = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
local now = now_ms()
local out = {}
for i = 1, (#KEYS - 12) / 2 do
  local task, events = KEYS[11 + 2 * i], KEYS[12 + 2 * i]
  local id, mine = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
  local f = redis.call('HMGET', task, 'status', 'attempts', 'max_attempts', 'type', 'payload', 'timeout_s',
    'lease_ms', 'consumer', 'error', 'defaults', 'cancel_requested_ms', 'cancel_by', 'traceparent', 'ckey', 'rate_paid')
  local lease = tonumber(f[7] or '0') or 0
  if not f[1] then
    task_missing(dead, ARGV[3], id, 'expired, or its enqueue was refused')
    release_slot(id)
    out[i] = {'dead', 'TaskMissing'}
  elseif f[1] ~= 'queued' and f[1] ~= 'running' and f[1] ~= 'throttled' then
    out[i] = {'done', f[1], f[4], f[2], f[9] or ''}
  elseif f[1] == 'running' and lease > now and not (mine == '1' and f[8] == consumer) then
    out[i] = {'busy', lease - now}
  elseif f[1] == 'running' and f[11] then
    cancel_now(task, events, id, now, f[12] or '', ARGV[2], 'cancelled while running; its worker vanished')
    release_slot(id)
    out[i] = {'done', 'cancelled', f[4], f[2], ''}
  elseif paused then
    redis.call('ZADD', delayed, now + 1000, id)
    out[i] = {'deferred'}
  elseif not handler_of(handlers, f[4]) then
    local err = defer_unknown(task, events, delayed, dead, workers, id, f, now, unknown, ARGV[2], ARGV[3])
    if err then release_slot(id) end
    if err then out[i] = {'dead', 'UnknownTaskType', f[4], f[2], err} else out[i] = {'deferred'} end
  else
    local handler = handler_of(handlers, f[4])
    local extra = defaults_for(f, handler, f[10])
    local held_back
    if f[1] == 'running' and tonumber(f[2]) >= tonumber(f[3]) then
      write_defaults(task, extra)
      local err = worker_lost(task, events, dead, ARGV[2], ARGV[3], id, f[4], f[2], now)
      release_slot(id)
      out[i] = {'dead', 'WorkerLost', f[4], f[2], err}
    elseif limited(handler) then
      held_back = admit(task, id, nil, f, handler, delayed, now, f[14], f[15])
    end
    if held_back then
      out[i] = held_back
    elseif not out[i] then
      out[i] = begin_attempt(task, f, consumer, now, 'lease_ms', now + tonumber(ARGV[4]), extra, f[13])
    end
  end
  if out[i][1] ~= 'busy' then redis.call('ZREM', outbox, id) end
end
flush_tally(now)
return out
