-- Shared by every script: `state.scripts.load_script` puts it in front of each one (Lua in
-- Redis has no includes). Only functions here: a script uses what it needs.

-- Queue-wide keys a script that ends tasks sets before it calls the functions below (Lua in Redis
-- has no globals): the per-queue counters (`stats`), the index of recently finished tasks
-- (`recent`, kept to about `recent_max` entries) and the set of running tasks with a cancel
-- request (`cancels`). `counts` gathers this call's terminal states for one `flush_tally`.
local Q = {stats = nil, recent = nil, recent_max = 10000, cancels = nil, counts = {}}

local function is_terminal(status)
  return status == 'succeeded' or status == 'failed' or status == 'cancelled'
end

-- The server's clock in ms: one clock for every worker and function, whatever theirs say.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- Record one new task and hand it to the channel: enqueue.lua's step, shared with
-- schedule_fire.lua. `t[a..a+9]` holds the task in enqueue.lua's ARGV layout (id, type, queue,
-- payload JSON, max_attempts, timeout_s, delay_ms, pending TTL s, -, the fields the request left
-- out, then for enqueue.lua: the priority level and the request's `concurrency_key`), so
-- enqueue.lua passes its ARGV as is. `target` is the stream (XADD) or, with `outbox`,
-- the Kafka outbox (ZADD). A task of a non-default priority has `t[a + 10]` (its level, 0-9,
-- '' for the default) and `levels` (the queue's set of levels in use): its level is kept in the
-- task hash (`priority`) for promotions, and `target` is its level's stream. `t[a + 11]` (''
-- or absent for none) is kept as `ckey` for flow control. Returns the status.
local function record_task(task, target, delayed, outbox, now, t, a, levels)
  local delay = tonumber(t[a + 6])
  local status = 'queued'
  if delay > 0 then status = 'scheduled' end
  redis.call('HSET', task, 'id', t[a], 'type', t[a + 1], 'queue', t[a + 2], 'payload', t[a + 3],
    'max_attempts', t[a + 4], 'timeout_s', t[a + 5], 'status', status, 'attempts', 0, 'created_ms', now)
  if t[a + 9] ~= '' then redis.call('HSET', task, 'defaults', t[a + 9]) end
  if levels and t[a + 10] ~= '' then
    redis.call('HSET', task, 'priority', t[a + 10])
    redis.call('SADD', levels, t[a + 10])
  end
  if t[a + 11] and t[a + 11] ~= '' then redis.call('HSET', task, 'ckey', t[a + 11]) end  -- flow control
  -- a delayed task must outlive its delay: keep it PENDING_TTL_S past its due time
  redis.call('EXPIRE', task, tonumber(t[a + 7]) + math.ceil(delay / 1000))
  if delay > 0 then
    redis.call('ZADD', delayed, now + delay, t[a])
  elseif outbox then
    redis.call('ZADD', target, now, t[a])
  else
    redis.call('XADD', target, '*', 'id', t[a])
  end
  return status
end

-- Acknowledge a stream entry and delete it: acknowledged entries never pile up, and the
-- stream is never trimmed by length (MAXLEN would delete pending entries too).
local function ack(stream, group, entry)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
end

-- `ack` for a list of entries: one XACK and one XDEL for them all (in chunks, for unpack's limit).
local function ack_all(stream, group, entries)
  for from = 1, #entries, 1000 do
    local chunk = {unpack(entries, from, math.min(from + 999, #entries))}
    redis.call('XACK', stream, group, unpack(chunk))
    redis.call('XDEL', stream, unpack(chunk))
  end
end

-- Whether stream id `a` ('ms-seq', as Redis writes it: no leading zeros) comes before `b`,
-- compared as the two 64-bit numbers they are (digit count first, then the digits).
local function id_before(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end

-- The lease fence on Redis Streams: the set of `entries` pending for `consumer` right now.
-- One XPENDING over the entries' id range, filtered by consumer, instead of one per entry;
-- further pages only while the consumer holds more entries in that range than asked for, so
-- the answer is exact whatever else it holds.
local function pending_of(stream, group, consumer, entries)
  local set = {}
  if #entries == 0 then return set end
  local lo, hi = entries[1], entries[1]
  for i = 2, #entries do
    if id_before(entries[i], lo) then lo = entries[i] end
    if id_before(hi, entries[i]) then hi = entries[i] end
  end
  local from, page = lo, #entries + 16
  while true do
    local p = redis.call('XPENDING', stream, group, from, hi, page, consumer)
    for j = 1, #p do set[p[j][1]] = true end
    if #p < page or p[#p][1] == hi then return set end
    from = '(' .. p[#p][1]
  end
end

-- The one dead-letter record shape: id, type, attempts, error JSON, and for an entry that
-- names no task, the raw entry (`extra`). Unknown fields are ''. With the task hash (`task`),
-- the record also keeps what a re-drive needs once the task's own record has expired (queue,
-- payload, max_attempts, timeout_s), and the task remembers its dead-letter entry. The stream is
-- trimmed to DEAD_MAX (and DEAD_TTL_S) by the workers, counting what they drop; `maxlen` here is
-- a backstop twice that.
local function dead_letter(dead, maxlen, id, type, attempts, err, extra, task)
  local f = {}
  if task then f = redis.call('HMGET', task, 'queue', 'payload', 'max_attempts', 'timeout_s') end
  local entry = redis.call('XADD', dead, 'MAXLEN', '~', 2 * tonumber(maxlen), '*', 'id', id or '',
    'type', type or '', 'attempts', attempts or '', 'error', err, 'entry', extra or '', 'queue', f[1] or '',
    'payload', f[2] or '', 'max_attempts', f[3] or '', 'timeout_s', f[4] or '')
  if task then redis.call('HSET', task, 'dead_entry', entry) end
  return entry
end

-- An operator's action on a task, kept in its `audit` field (JSON list, the last 50).
local function audit(task, now, actor, action, detail)
  local raw = redis.call('HGET', task, 'audit')
  local list = {}
  if raw then list = cjson.decode(raw) end
  list[#list + 1] = {at_ms = now, actor = actor, action = action, detail = detail or ''}
  while #list > 50 do table.remove(list, 1) end
  redis.call('HSET', task, 'audit', cjson.encode(list))
end

-- One finished attempt in the task's history: field `attempt:<n>` (JSON). The attempt that ends
-- a series is not written here: the task's own fields (consumer, started_ms, finished_ms,
-- status, error) describe it until a retry starts a new series (see `requeue`).
local function record_attempt(task, n, worker, started, finished, outcome, err)
  local ok, decoded = pcall(cjson.decode, err or 'null')
  if not ok then decoded = err end
  redis.call('HSETNX', task, 'attempt:' .. n, cjson.encode({attempt = tonumber(n), worker = worker or '',
    started_ms = tonumber(started), finished_ms = tonumber(finished), outcome = outcome, error = decoded}))
end

-- Count a terminal state for `flush_tally` (letters: s succeeded, f failed, c cancelled).
local function tally(status)
  local letter = string.sub(status, 1, 1)
  Q.counts[letter] = (Q.counts[letter] or 0) + 1
end

-- Add this call's counts to the queue's ring of 10-second buckets (an hour of them: 361 slots,
-- fields t<slot> = bucket number, s<slot>/f<slot>/c<slot> = counts), reset when a slot is reused.
-- The recently finished index is trimmed here, once per call, rather than by each XADD.
local function flush_tally(now)
  if Q.recent and next(Q.counts) ~= nil then redis.call('XTRIM', Q.recent, 'MAXLEN', '~', Q.recent_max) end
  if not Q.stats or next(Q.counts) == nil then return end
  local bucket = math.floor(now / 10000)
  local slot = bucket % 361
  if tonumber(redis.call('HGET', Q.stats, 't' .. slot)) ~= bucket then
    redis.call('HSET', Q.stats, 't' .. slot, bucket, 's' .. slot, 0, 'f' .. slot, 0, 'c' .. slot, 0)
  end
  for letter, n in pairs(Q.counts) do redis.call('HINCRBY', Q.stats, letter .. slot, n) end
  Q.counts = {}
end

-- Take the next attempt of a task: running under `consumer`, fenced by `field` = `value`
-- (the stream entry on Redis Streams, the lease deadline on Kafka), in one HSET with the
-- handler's defaults (`extra`, from `defaults_for`; nil for none). Returns the 'run' verdict
-- {'run', type, payload, attempt, max_attempts, timeout_s, traceparent} from HMGET fields
-- {status, attempts, max_attempts, type, payload, timeout_s} and the task's `traceparent`
-- (false, a nil reply, when it was enqueued with tracing off).
local function begin_attempt(task, f, consumer, now, field, value, extra, traceparent)
  local attempt = tonumber(f[2]) + 1
  if f[1] == 'running' and attempt > 1 then  -- its last attempt's worker vanished: keep it in the history
    local last = redis.call('HMGET', task, 'consumer', 'started_ms')
    record_attempt(task, f[2], last[1], last[2], now, 'lost', cjson.encode({type = 'WorkerLost',
      message = 'the worker running this attempt died or lost its lease'}))
  end
  if extra then  -- `defaults` emptied in the same HSET (no HDEL: one command less per first start)
    redis.call('HSET', task, 'status', 'running', 'attempts', attempt, 'started_ms', now,
      'consumer', consumer, field, value, 'defaults', '', unpack(extra))
  else
    redis.call('HSET', task, 'status', 'running', 'attempts', attempt, 'started_ms', now,
      'consumer', consumer, field, value)
  end
  return {'run', f[4], f[5], attempt, f[3], f[6], traceparent}
end

-- The end of a task's life, after its status is written: kept for the result TTL, counted
-- (the fences let a task get here once; `terminal_writes` audits that), tallied for the queue,
-- indexed among the recently finished (trimmed by `flush_tally`), and announced to long-polls on the task's events
-- channel (sharded pub/sub: no memory kept). `announce` is the same without the count, for a
-- caller that wrote `terminal_writes` in its own HSET.
local function announce(task, events, status, ttl, id)
  redis.call('EXPIRE', task, ttl)
  redis.call('SPUBLISH', events, status)
  tally(status)
  if Q.recent then redis.call('XADD', Q.recent, '*', 'id', id, 'status', status) end  -- trimmed by flush_tally
  if status == 'cancelled' and Q.cancels then redis.call('SREM', Q.cancels, id) end  -- only a cancel is in it
end

local function terminal(task, events, status, ttl, id)
  redis.call('HINCRBY', task, 'terminal_writes', 1)
  announce(task, events, status, ttl, id)
end

-- End a task `cancelled` (whatever it was doing), saying who asked.
local function cancel_now(task, events, id, now, actor, ttl, why)
  local err = cjson.encode({type = 'Cancelled', traceback = cjson.null, message = why .. ' (by ' .. actor .. ')'})
  redis.call('HSET', task, 'status', 'cancelled', 'error', err, 'finished_ms', now)
  terminal(task, events, 'cancelled', ttl, id)
end

-- A failed or cancelled task back to `queued` as a new series of attempts under the same id
-- (retry and re-drive): the series that ended goes into the history; the new series gets as
-- many attempts as the first had. `target`/`kind`: the work stream (XADD), or, on Kafka, the
-- delayed zset due now (the next promotion publishes it through the outbox); a task of a
-- non-default priority goes through the delayed zset on Redis Streams too, so the promotion puts
-- it in its level's stream. `fallback` (the
-- dead-letter record's fields, or nil) recreates a task whose record expired. Returns
-- {'queued'}, {'missing'} or {'conflict', status}.
local function requeue(task, target, kind, delayed, dead, dead_entry, id, now, pending_ttl, fallback)
  local f = redis.call('HMGET', task, 'status', 'attempts', 'max_attempts', 'series_max', 'consumer',
    'started_ms', 'finished_ms', 'error', 'dead_entry', 'priority')
  if not f[1] then
    if not fallback or fallback.type == '' or fallback.payload == '' then return {'missing'} end
    redis.call('HSET', task, 'id', id, 'type', fallback.type, 'queue', fallback.queue, 'payload', fallback.payload,
      'max_attempts', fallback.max_attempts, 'timeout_s', fallback.timeout_s, 'attempts', fallback.attempts,
      'status', 'failed', 'created_ms', now, 'error', fallback.error)
    f = {'failed', fallback.attempts, fallback.max_attempts, nil, nil, nil, nil, fallback.error, dead_entry}
  elseif f[1] ~= 'failed' and f[1] ~= 'cancelled' then
    return {'conflict', f[1]}
  end
  local attempts = tonumber(f[2]) or 0
  if attempts > 0 and f[6] then record_attempt(task, attempts, f[5], f[6], f[7], f[1], f[8]) end
  local series_max = tonumber(f[4] or f[3])
  redis.call('HDEL', task, 'result', 'error', 'finished_ms', 'started_ms', 'consumer', 'cancel_requested_ms',
    'cancel_by', 'dead_entry', 'entry', 'lease_ms', 'unknown_since', 'deferrals')
  redis.call('HSET', task, 'status', 'queued', 'max_attempts', attempts + series_max, 'series_max', series_max)
  redis.call('HINCRBY', task, 'series', 1)
  redis.call('EXPIRE', task, pending_ttl)
  if kind == 'stream' and not f[10] then
    redis.call('XADD', target, '*', 'id', id)
  else
    redis.call('ZADD', delayed, now, id)
  end
  local entry = dead_entry ~= '' and dead_entry or f[9]
  if entry then redis.call('XDEL', dead, entry) end
  return {'queued'}
end

-- Every attempt was started and the last one never finished: it took its worker down.
-- Fail the task and dead-letter it; returns the error JSON.
local function worker_lost(task, events, dead, ttl, maxlen, id, type, attempts, now)
  local err = cjson.encode({type = 'WorkerLost', traceback = cjson.null,
    message = 'the worker running the last attempt died or lost its lease'})
  redis.call('HSET', task, 'status', 'failed', 'error', err, 'finished_ms', now)
  dead_letter(dead, maxlen, id, type, attempts, err, nil, task)
  terminal(task, events, 'failed', ttl, id)
  return err
end

-- A delivery whose task record is gone: dead-letter it, saying why the record may be missing.
local function task_missing(dead, maxlen, id, why)
  local err = cjson.encode({type = 'TaskMissing', message = 'task record not found (' .. why .. ')'})
  dead_letter(dead, maxlen, id, '', '', err)
end


-- A worker's handler for `type`, from its handler table (decoded JSON: {exact = {[type] =
-- {max_attempts, timeout_s}}, prefix = {[prefix] = {...}}}, 0 meaning "no default"): an exact
-- type first, then the longest matching prefix (as `Registry.lookup`). nil: no handler.
local function handler_of(handlers, task_type)
  local found = handlers.exact[task_type]
  if found then return found end
  local best, len = nil, -1
  for prefix, d in pairs(handlers.prefix) do
    if #prefix > len and string.sub(task_type, 1, #prefix) == prefix then best, len = d, #prefix end
  end
  return best
end

-- The first start of a task gives the fields its request left out (`left_out`: the task's
-- `defaults` field, nil or '' when none is left) the handler's own defaults `d`. Keeps `f` (status,
-- attempts, max_attempts, type, payload, timeout_s) in step and returns the field/value pairs to
-- write (`begin_attempt` writes them and empties `defaults`), or nil when nothing was left out.
local function defaults_for(f, d, left_out)
  if not left_out or left_out == '' then return nil end
  local extra = {}
  for field in string.gmatch(left_out, '[^,]+') do
    if field == 'max_attempts' and d[1] > 0 then
      extra[#extra + 1], extra[#extra + 2] = 'max_attempts', d[1]
      f[3] = tostring(d[1])
    elseif field == 'timeout_s' and d[2] > 0 then
      extra[#extra + 1], extra[#extra + 2] = 'timeout_s', d[2]
      f[6] = tostring(d[2])
    end
  end
  return extra
end

-- `defaults_for`'s pairs written on their own (a start that does not begin an attempt).
local function write_defaults(task, extra)
  if not extra then return end
  redis.call('HSET', task, 'defaults', '', unpack(extra))
end

-- Whether a worker seen since `since` (server ms) advertises a handler for `type` in the queue's
-- workers hash (consumer -> {seen_ms, handlers}).
local function known_by_live(workers, task_type, since)
  local all = redis.call('HGETALL', workers)
  for i = 2, #all, 2 do
    local ok, w = pcall(cjson.decode, all[i])
    if ok and type(w) == 'table' and (tonumber(w.seen_ms) or 0) >= since and handler_of(w.handlers, task_type) then
      return true
    end
  end
  return false
end

-- A worker without a handler for the task's type spends no attempt on it: the task waits,
-- still queued, in the delayed zset for a worker that has one (`u`: {grace_ms, live_ms,
-- cap_ms}). While a live worker advertises a handler, it is offered again at once (100 ms):
-- the next reader is likely to have one. While none does, after a growing pause up to cap_ms,
-- and once it has waited UNKNOWN_TYPE_GRACE_S it fails with UnknownTaskType (returns the error
-- JSON; false while it waits).
local function defer_unknown(task, events, delayed, dead, workers, id, f, now, u, ttl, maxlen)
  redis.call('HSETNX', task, 'unknown_since', now)
  local since = tonumber(redis.call('HGET', task, 'unknown_since'))
  local known = known_by_live(workers, f[4], now - u[2])
  if now - since >= u[1] and not known then
    local err = cjson.encode({type = 'UnknownTaskType', traceback = cjson.null,
      message = 'no live worker has a handler for task type ' .. f[4]})
    redis.call('HSET', task, 'status', 'failed', 'error', err, 'finished_ms', now)
    dead_letter(dead, maxlen, id, f[4], f[2], err, nil, task)
    terminal(task, events, 'failed', ttl, id)
    return err
  end
  local n = redis.call('HINCRBY', task, 'deferrals', 1)
  local pause = 100
  if not known then pause = math.min(u[3], 100 * 2 ^ math.min(n - 1, 16)) end
  redis.call('HSET', task, 'status', 'queued')
  redis.call('ZADD', delayed, now + pause, id)
  return false
end
