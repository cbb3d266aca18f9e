-- Purge queued tasks: each given entry leaves the work stream, and its task, if still queued,
-- ends `cancelled` (it never runs). An entry a worker has just read is still acknowledged
-- unrun: its start finds the task cancelled.
-- KEYS[1] work stream  KEYS[2] stats hash  KEYS[3] recently finished stream  KEYS[4] cancel requests set
--   KEYS[5..8] flow control: slot holders, slots held, throttled zset, rates (limits.lua `L`); a
--   purged entry's task that is `throttled` (back from a rate wait, or given a slot and not yet
--   started) is purged too, and its slot goes to the next waiter
--   then per entry i: KEYS[7+2i] task hash, KEYS[8+2i] events channel
-- ARGV[1] actor  ARGV[2] result TTL s  ARGV[3] recently finished maxlen
--   then per entry i: ARGV[2+2i] entry id, ARGV[3+2i] task id
-- Returns the number of tasks cancelled.
Q.stats, Q.recent, Q.cancels, Q.recent_max = KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[3])
L.holders, L.held, L.waiting, L.rates, L.target, L.kind = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[1], 'stream'
local now = now_ms()
local n = 0
for i = 1, (#KEYS - 8) / 2 do
  local task, events, entry, id = KEYS[7 + 2 * i], KEYS[8 + 2 * i], ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  redis.call('XDEL', KEYS[1], entry)
  local status = redis.call('HGET', task, 'status')
  if status == 'queued' or status == 'throttled' then
    audit(task, now, ARGV[1], 'purge', status)
    cancel_now(task, events, id, now, ARGV[1], ARGV[2], 'purged from its queue')
    release_slot(id)
    n = n + 1
  end
end
flush_tally(now)
return n
