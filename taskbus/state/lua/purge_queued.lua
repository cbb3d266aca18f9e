-- Purge queued tasks: each given entry leaves the work stream, and its task, if still queued,
-- ends `cancelled` (it never runs). An entry a worker has just read is still acknowledged
-- unrun: its start finds the task cancelled.
-- KEYS[1] work stream  KEYS[2] stats hash  KEYS[3] recently finished stream  KEYS[4] cancel requests set
--   then per entry i: KEYS[3+2i] task hash, KEYS[4+2i] events channel
-- ARGV[1] actor  ARGV[2] result TTL s  ARGV[3] recently finished maxlen
--   then per entry i: ARGV[2+2i] entry id, ARGV[3+2i] task id
-- Returns the number of tasks cancelled.
Q.stats, Q.recent, Q.cancels, Q.recent_max = KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[3])
local now = now_ms()
local n = 0
for i = 1, (#KEYS - 4) / 2 do
  local task, events, entry, id = KEYS[3 + 2 * i], KEYS[4 + 2 * i], ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  redis.call('XDEL', KEYS[1], entry)
  if redis.call('HGET', task, 'status') == 'queued' then
    audit(task, now, ARGV[1], 'purge', 'queued')
    cancel_now(task, events, id, now, ARGV[1], ARGV[2], 'purged from its queue')
    n = n + 1
  end
end
flush_tally(now)
return n
