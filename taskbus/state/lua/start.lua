-- Redis Streams: mark a batch of delivered entries running, fenced by lease ownership (the
-- entry must be pending for this consumer: one XPENDING for the batch, see pending_of). Only
-- terminal states are announced on the task's events channel (long-polls wait for those alone).
-- KEYS[1] work stream  KEYS[2] dead-letter stream  KEYS[3] delayed zset  KEYS[4] workers hash
--   KEYS[5] stats hash  KEYS[6] recently finished stream  KEYS[7] cancel requests set  KEYS[8] paused flag
--   KEYS[9..12] flow control: slot holders, slots held, throttled (waiting) zset, rates (limits.lua `L`)
--   then per entry i: KEYS[11+2i] task hash, KEYS[12+2i] events channel
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] result TTL s  ARGV[4] dead-letter maxlen
--   ARGV[5] this worker's handler table (JSON, see handler_of)  ARGV[6] unknown-type grace ms
--   ARGV[7] ms a worker counts as live after it was last seen  ARGV[8] longest deferral ms
--   ARGV[9] recently finished maxlen
--   then per entry i: ARGV[8+2i] entry id, ARGV[9+2i] task id
-- Returns per entry one of:
--   {'run', type, payload, attempt, max_attempts, timeout_s, traceparent (nil when the task has none)}
--   {'lost'}      the entry is no longer pending for this consumer
--   {'done'}      the task is already terminal (a redelivery, or cancelled before it started),
--                 or it was running with a cancel request and its worker vanished: it ends
--                 cancelled now. Acknowledged, not run.
--   {'deferred'}  this worker has no handler for its type: acknowledged, back in the delayed zset
--   {'paused'}    the queue is paused: acknowledged, back in the delayed zset (still queued),
--                 due in a second; workers do not read a paused queue, so it waits in the stream
--   {'throttled', reason[, wait ms]}  held back by its type's concurrency or rate limit
--                 (limits.lua `admit`): acknowledged, waiting, no attempt spent
--   {'dead', reason}  dead-lettered now: task record missing, the last attempt died with its
--                 worker, or no live worker has a handler for its type
local stream, dead, delayed, workers, group, consumer = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2]
Q.stats, Q.recent, Q.cancels, Q.recent_max = KEYS[5], KEYS[6], KEYS[7], tonumber(ARGV[9])
L.holders, L.held, L.waiting, L.rates, L.target, L.kind = KEYS[9], KEYS[10], KEYS[11], KEYS[12], stream, 'stream'
local handlers = cjson.decode(ARGV[5])
local unknown = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
local paused = redis.call('EXISTS', KEYS[8]) == 1
local now = now_ms()
local n = (#KEYS - 12) / 2
local entries = {}
for i = 1, n do entries[i] = ARGV[8 + 2 * i] end
local mine = pending_of(stream, group, consumer, entries)
local acked = {}  -- acknowledged together at the end (the fence above was read first, for all)
local out = {}
for i = 1, n do
  local task, events = KEYS[11 + 2 * i], KEYS[12 + 2 * i]
  local entry, id = entries[i], ARGV[9 + 2 * i]
  if not mine[entry] then
    out[i] = {'lost'}
  else
    mine[entry] = nil  -- an entry listed twice is started once
    -- only the fields of the common path (the cancel and flow-control paths read theirs there)
    local f = redis.call('HMGET', task, 'status', 'attempts', 'max_attempts', 'type', 'payload', 'timeout_s',
      'defaults', 'cancel_requested_ms', 'traceparent')
    local handler = f[4] and handler_of(handlers, f[4])
    if not f[1] then
      acked[#acked + 1] = entry
      task_missing(dead, ARGV[4], id, 'expired or never written')
      release_slot(id)
      out[i] = {'dead', 'TaskMissing'}
    elseif is_terminal(f[1]) then
      acked[#acked + 1] = entry
      out[i] = {'done'}
    elseif f[1] == 'running' and f[8] then
      acked[#acked + 1] = entry
      local by = redis.call('HGET', task, 'cancel_by')
      cancel_now(task, events, id, now, by or '', ARGV[3], 'cancelled while running; its worker vanished')
      release_slot(id)
      out[i] = {'done'}
    elseif paused then
      acked[#acked + 1] = entry
      redis.call('ZADD', delayed, now + 1000, id)
      out[i] = {'paused'}
    elseif not handler then
      acked[#acked + 1] = entry
      if defer_unknown(task, events, delayed, dead, workers, id, f, now, unknown, ARGV[3], ARGV[4]) ~= false then
        release_slot(id)
        out[i] = {'dead', 'UnknownTaskType'}
      else
        out[i] = {'deferred'}
      end
    else
      local extra = defaults_for(f, handler, f[7])
      if tonumber(f[2]) >= tonumber(f[3]) then
        write_defaults(task, extra)
        acked[#acked + 1] = entry
        worker_lost(task, events, dead, ARGV[3], ARGV[4], id, f[4], f[2], now)
        release_slot(id)
        out[i] = {'dead', 'WorkerLost'}
      else
        local held_back = false
        if limited(handler) then
          local lim = redis.call('HMGET', task, 'ckey', 'rate_paid')
          held_back = admit(task, id, entry, f, handler, delayed, now, lim[1], lim[2])
        end
        if held_back then
          acked[#acked + 1] = entry
          out[i] = held_back
        else
          out[i] = begin_attempt(task, f, consumer, now, 'entry', entry, extra, f[9])
        end
      end
    end
  end
end
ack_all(stream, group, acked)
flush_tally(now)
return out
