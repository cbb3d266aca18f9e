-- Kafka channel: mark the tasks of a batch of delivered records running. Kafka has no per-record
-- pending list to fence with, so the task hash carries the lease: `lease_ms` (server clock),
-- renewed by the running worker's heartbeat. A record of a task another worker holds under a live
-- lease (a duplicate record, or a redelivery after a rebalance while its first worker still runs
-- it) is 'busy': the caller keeps its offset uncommitted and asks again when the lease may end.
-- Every task but a busy one leaves the outbox, where it waited to be published again if never started.
-- KEYS[1] dead-letter stream, KEYS[2] outbox zset, then per task i: KEYS[1+2i] task hash,
--   KEYS[2+2i] events channel
-- ARGV[1] consumer  ARGV[2] result TTL s  ARGV[3] dead-letter maxlen  ARGV[4] lease ms
--   then per task i: ARGV[3+2i] task id, ARGV[4+2i] '1' when this consumer may take back a task
--   recorded as running under its own name (the reply to its start was lost)
-- Returns per task one of:
--   {'run', type, payload, attempt, max_attempts, timeout_s}
--   {'busy', ms until the holder's lease ends}
--   {'done', status, type, attempts, error}  terminal, or owned by the delay schedule: not run
--   {'dead', reason}  dead-lettered now: task record missing, or last attempt died with its worker
local dead, outbox, consumer = KEYS[1], KEYS[2], ARGV[1]
local now = now_ms()
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  local task, events = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local id, mine = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local f = redis.call('HMGET', task, 'status', 'attempts', 'max_attempts', 'type', 'payload', 'timeout_s',
    'lease_ms', 'consumer', 'error')
  local lease = tonumber(f[7] or '0') or 0
  if not f[1] then
    task_missing(dead, ARGV[3], id, 'expired, or its enqueue was refused')
    out[i] = {'dead', 'TaskMissing'}
  elseif f[1] ~= 'queued' and f[1] ~= 'running' then
    out[i] = {'done', f[1], f[4], f[2], f[9] or ''}
  elseif f[1] == 'running' and lease > now and not (mine == '1' and f[8] == consumer) then
    out[i] = {'busy', lease - now}
  elseif f[1] == 'running' and tonumber(f[2]) >= tonumber(f[3]) then
    local err = worker_lost(task, events, dead, ARGV[2], ARGV[3], id, f[4], f[2], now)
    out[i] = {'dead', 'WorkerLost', f[4], f[2], err}
  else
    out[i] = begin_attempt(task, f, consumer, now, 'lease_ms', now + tonumber(ARGV[4]))
  end
  if out[i][1] ~= 'busy' then redis.call('ZREM', outbox, id) end
end
return out
