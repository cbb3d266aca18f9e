-- Redis Streams: mark a batch of delivered entries running, fenced by lease ownership (the
-- entry must be pending for this consumer). Only terminal states are announced on the task's
-- events channel (long-polls wait for those alone).
-- KEYS[1] work stream   KEYS[2] dead-letter stream   then per entry i: KEYS[1+2i] task hash, KEYS[2+2i] events channel
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] result TTL s  ARGV[4] dead-letter maxlen
-- then per entry i: ARGV[3+2i] entry id, ARGV[4+2i] task id
-- Returns per entry one of:
--   {'run', type, payload, attempt, max_attempts, timeout_s}
--   {'lost'}    the entry is no longer pending for this consumer
--   {'done'}    the task is already terminal (a redelivery): acknowledged, not run again
--   {'dead', reason}  dead-lettered now: task record missing, or last attempt died with its worker
local stream, dead, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local now = now_ms()
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  local task, events = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local entry, id = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local pending = redis.call('XPENDING', stream, group, entry, entry, 1, consumer)
  if #pending == 0 then
    out[i] = {'lost'}
  else
    local f = redis.call('HMGET', task, 'status', 'attempts', 'max_attempts', 'type', 'payload', 'timeout_s')
    if not f[1] then
      ack(stream, group, entry)
      task_missing(dead, ARGV[4], id, 'expired or never written')
      out[i] = {'dead', 'TaskMissing'}
    elseif f[1] == 'succeeded' or f[1] == 'failed' then
      ack(stream, group, entry)
      out[i] = {'done'}
    elseif tonumber(f[2]) >= tonumber(f[3]) then
      ack(stream, group, entry)
      worker_lost(task, events, dead, ARGV[3], ARGV[4], id, f[4], f[2], now)
      out[i] = {'dead', 'WorkerLost'}
    else
      out[i] = begin_attempt(task, f, consumer, now, 'entry', entry)
    end
  end
end
return out
