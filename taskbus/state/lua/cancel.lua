-- Cancel a task (operators and applications). Whichever of cancel and finish is recorded first
-- wins, in this script and in finish.lua: a task ends in exactly one terminal state.
-- KEYS[1] task hash  KEYS[2] events channel  KEYS[3] delayed zset  KEYS[4] outbox zset
--   KEYS[5] stats hash  KEYS[6] recently finished stream  KEYS[7] cancel requests set
--   KEYS[8..11] flow control: slot holders, slots held, throttled zset, rates (limits.lua `L`)
--   KEYS[12] work stream (where a released slot's next waiter goes on Redis Streams)
-- ARGV[1] task id  ARGV[2] actor (a key's label)  ARGV[3] result TTL s  ARGV[4] recently finished maxlen
--   ARGV[5] 'stream' or 'delayed' (Kafka: a released slot's next waiter goes through the delayed zset)
-- A throttled task leaves its slot's waiting line; a task not yet running that holds a slot
-- (given to it by a release, not started yet) releases it to the next waiter.
-- Returns {'cancelled'}: it was queued or scheduled and never starts (a stream entry it left is
--   acknowledged unrun by the worker that reads it); {'cancelling'}: it runs, the request is
--   recorded (its worker sees it in the cancel requests set; the task ends cancelled when the
--   handler returns, or CANCEL_GRACE_S later); {'terminal', status}; {'missing'}.
Q.stats, Q.recent, Q.cancels, Q.recent_max = KEYS[5], KEYS[6], KEYS[7], tonumber(ARGV[4])
L.holders, L.held, L.waiting, L.rates = KEYS[8], KEYS[9], KEYS[10], KEYS[11]
L.target, L.kind = ARGV[5] == 'delayed' and KEYS[3] or KEYS[12], ARGV[5] == 'delayed' and 'delayed' or 'stream'
local task, id, actor = KEYS[1], ARGV[1], ARGV[2]
local f = redis.call('HMGET', task, 'status', 'cancel_requested_ms', 'twait')
if not f[1] then return {'missing'} end
if is_terminal(f[1]) then return {'terminal', f[1]} end
local now = now_ms()
if f[1] == 'running' then
  if not f[2] then
    redis.call('HSET', task, 'cancel_requested_ms', now, 'cancel_by', actor)
    redis.call('SADD', KEYS[7], id)
    audit(task, now, actor, 'cancel', 'requested while running')
  end
  return {'cancelling'}
end
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
if f[3] then redis.call('ZREM', KEYS[10], f[3]) end
if f[1] == 'throttled' then redis.call('HDEL', task, 'twait', 'rate_paid') end  -- a retry starts afresh
release_slot(id)
redis.call('HSET', task, 'cancel_requested_ms', now, 'cancel_by', actor)
audit(task, now, actor, 'cancel', 'was ' .. f[1])
cancel_now(task, KEYS[2], id, now, actor, ARGV[3], 'cancelled before it started')
flush_tally(now)
return {'cancelled'}
