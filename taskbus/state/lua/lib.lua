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
-- names no task, the raw entry (`extra`). Unknown fields are ''.
local function dead_letter(dead, maxlen, id, type, attempts, err, extra)
  redis.call('XADD', dead, 'MAXLEN', '~', maxlen, '*', 'id', id or '', 'type', type or '',
    'attempts', attempts or '', 'error', err, 'entry', extra or '')
end

-- Take the next attempt of a task: running under `consumer`, fenced by `field` = `value`
-- (the stream entry on Redis Streams, the lease deadline on Kafka), in one HSET with the
-- handler's defaults (`extra`, from `defaults_for`; nil for none). Returns the 'run' verdict
-- {'run', type, payload, attempt, max_attempts, timeout_s} from HMGET fields
-- {status, attempts, max_attempts, type, payload, timeout_s}.
local function begin_attempt(task, f, consumer, now, field, value, extra)
  local attempt = tonumber(f[2]) + 1
  if extra then
    redis.call('HSET', task, 'status', 'running', 'attempts', attempt, 'started_ms', now,
      'consumer', consumer, field, value, unpack(extra))
    redis.call('HDEL', task, 'defaults')
  else
    redis.call('HSET', task, 'status', 'running', 'attempts', attempt, 'started_ms', now,
      'consumer', consumer, field, value)
  end
  return {'run', f[4], f[5], attempt, f[3], f[6]}
end

-- The end of a task's life, after its status is written: kept for the result TTL, counted
-- (the fences let a task get here once; `terminal_writes` audits that) and announced to
-- long-polls on the task's events channel (sharded pub/sub: no memory kept). `announce` is
-- the same without the count, for a caller that wrote `terminal_writes` in its own HSET.
local function announce(task, events, status, ttl)
  redis.call('EXPIRE', task, ttl)
  redis.call('SPUBLISH', events, status)
end

local function terminal(task, events, status, ttl)
  redis.call('HINCRBY', task, 'terminal_writes', 1)
  announce(task, events, status, ttl)
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
-- `defaults` field, nil when none is left) the handler's own defaults `d`. Keeps `f` (status,
-- attempts, max_attempts, type, payload, timeout_s) in step and returns the field/value pairs to
-- write (`begin_attempt` writes them and deletes `defaults`), or nil when nothing was left out.
local function defaults_for(f, d, left_out)
  if not left_out then return nil end
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
  if #extra > 0 then redis.call('HSET', task, unpack(extra)) end
  redis.call('HDEL', task, 'defaults')
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
    dead_letter(dead, maxlen, id, f[4], f[2], err)
    terminal(task, events, 'failed', ttl)
    return err
  end
  local n = redis.call('HINCRBY', task, 'deferrals', 1)
  local pause = 100
  if not known then pause = math.min(u[3], 100 * 2 ^ math.min(n - 1, 16)) end
  redis.call('HSET', task, 'status', 'queued')
  redis.call('ZADD', delayed, now + pause, id)
  return false
end
