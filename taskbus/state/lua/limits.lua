-- Flow control (issue 14): concurrency slots and rate limits. Shared like lib.lua, after it
-- (`state.scripts.load_script` puts both in front of each script); only functions here.
-- A limited type's handler row (see handler_of) has four more columns: d[3] concurrency (0:
-- none), d[4] the payload field naming the limit key ('' : none), d[5] ms between starts (0: no
-- rate), d[6] burst. A limit key ("slot") is "type\0key": the task's request `ckey`, else the
-- payload field's value, else '' (one pool per type). A script using these sets `L` first, from
-- the queue's fixed keys: `holders` (task id -> slot it holds), `held` (slot -> slots held),
-- `waiting` (lexicographic zset, all scores 0, of "slot\0order\0task id": each slot's FIFO),
-- `rates` (slot -> GCRA theoretical arrival time, ms) and where a task given a slot goes:
-- `target` with `kind` 'stream' (XADD) or 'delayed' (ZADD due now, for the Kafka channel).
local L = {holders = nil, held = nil, waiting = nil, rates = nil, target = nil, kind = 'stream'}

local function limited(d)
  return d[3] ~= nil and (d[3] > 0 or d[5] > 0)
end

local function limit_key(task_type, d, ckey, payload)
  local key = ckey
  if not key and d[4] ~= '' then
    local ok, p = pcall(cjson.decode, payload)
    local v = ok and type(p) == 'table' and p[d[4]] or nil
    if type(v) == 'string' then key = v
    elseif type(v) == 'number' or type(v) == 'boolean' then key = tostring(v)
    elseif type(v) == 'table' then key = cjson.encode(v) end
  end
  -- a NUL in a key would blur where it ends in the waiting zset's members: fold it (pools merge)
  return task_type .. '\0' .. string.gsub(key or '', '%z', '\1')
end

-- A waiter's place in its slot's FIFO: its stream entry id, zero-padded to sort as text.
local function wait_order(entry)
  local ms, seq = string.match(entry or '', '^(%d+)%-(%d+)$')
  if not ms then ms, seq = tostring(now_ms()), '0' end
  return string.rep('0', 15 - #ms) .. ms .. string.rep('0', 10 - #seq) .. seq
end

-- Give one slot of `slot` (already counted in `held`) to its head waiter, which becomes its
-- holder at once and goes back to the channel. Its task hash (a key this script was not given)
-- still reads `throttled` until a worker starts it. Returns whether there was a waiter.
local function pass_slot(slot)
  local head = redis.call('ZRANGEBYLEX', L.waiting, '[' .. slot .. '\0', '[' .. slot .. '\0\255', 'LIMIT', 0, 1)[1]
  if not head then return false end
  redis.call('ZREM', L.waiting, head)
  local id = string.match(head, '([^%z]+)$')
  redis.call('HSET', L.holders, id, slot)
  if L.kind == 'stream' then
    redis.call('XADD', L.target, '*', 'id', id)
  else
    redis.call('ZADD', L.target, now_ms(), id)
  end
  return true
end

-- Release the slot task `id` holds, if any: to the slot's head waiter, or back to the pool.
local function release_slot(id)
  if not L.holders then return end
  local slot = redis.call('HGET', L.holders, id)
  if not slot then return end
  redis.call('HDEL', L.holders, id)
  if not pass_slot(slot) and redis.call('HINCRBY', L.held, slot, -1) <= 0 then
    redis.call('HDEL', L.held, slot)
  end
end

-- GCRA over `field` of the rates hash: ms `interval` apart, `burst` at once. Returns 0 when a
-- start is allowed now, else the ms until it would be. `reserve`: the time is taken either way
-- (the next task reserves a later one: FIFO, no herd); else only an allowed start takes it.
local function gcra(field, interval, burst, now, reserve)
  local tat = tonumber(redis.call('HGET', L.rates, field)) or now
  if tat < now then tat = now end
  local wait = math.max(0, math.ceil(tat + interval - burst * interval - now))
  if reserve or wait == 0 then redis.call('HSET', L.rates, field, tat + interval) end
  return wait
end

-- The rate step of a start: a task reserves its time once (`paid`: it already has), and every
-- start also passes a GCRA over actual starts (field slot.."\0a"), so tasks whose reserved
-- times came late together (a slow promotion, a stalled worker) never bunch up. That one allows
-- one more at once: a start late by less than an interval catches up instead of pushing every
-- later one back, and any window of a period still holds at most rate + burst starts.
local function rate_wait(slot, d, paid, now)
  local wait = 0
  if not paid then wait = gcra(slot, d[5], d[6], now, true) end
  if wait == 0 then wait = gcra(slot .. '\0a', d[5], d[6] + 1, now, false) end
  return wait
end

-- The flow-control step of a start, for a task of a limited type (`d` its handler row, `f` the
-- start's HMGET with f[1] status, f[4] type, f[5] payload; `ckey` and `paid` its fields ckey and
-- rate_paid; `entry` its stream entry, nil on Kafka: waiters are then in the order they came). nil:
-- it may run now (holding its slot, if it has a concurrency limit); else {'throttled', reason}:
-- it waits without spending an attempt, in its slot's FIFO (concurrency) or in the delayed zset
-- until its reserved time (rate, `delayed`).
local function admit(task, id, entry, f, d, delayed, now, ckey, paid)
  local slot = limit_key(f[4], d, ckey, f[5])
  local holds = d[3] > 0 and redis.call('HGET', L.holders, id)
  if holds and f[1] == 'running' then return nil end  -- a reclaimed lease runs again under its slot
  if d[3] > 0 and not holds then
    local held = tonumber(redis.call('HGET', L.held, slot)) or 0
    while held < d[3] and pass_slot(slot) do  -- a raised limit: its waiters first
      held = redis.call('HINCRBY', L.held, slot, 1)
    end
    local waiter = redis.call('ZRANGEBYLEX', L.waiting, '[' .. slot .. '\0', '[' .. slot .. '\0\255', 'LIMIT', 0, 1)[1]
    if held >= d[3] or waiter then
      local member = slot .. '\0' .. wait_order(entry) .. '\0' .. id
      redis.call('ZADD', L.waiting, 0, member)
      redis.call('HSET', task, 'status', 'throttled', 'throttled_reason', 'concurrency', 'twait', member)
      return {'throttled', 'concurrency'}
    end
  end
  if d[5] > 0 then
    local wait = rate_wait(slot, d, paid, now)
    if wait > 0 then
      redis.call('ZADD', delayed, now + wait, id)
      redis.call('HSET', task, 'status', 'throttled', 'throttled_reason', 'rate', 'rate_paid', 1)
      return {'throttled', 'rate', wait}
    end
  end
  if d[3] > 0 then
    if not holds then
      redis.call('HINCRBY', L.held, slot, 1)
      redis.call('HSET', L.holders, id, slot)
    end
    redis.call('HSET', task, 'slot', slot)  -- finish.lua releases it
  end
  redis.call('HDEL', task, 'throttled_reason', 'rate_paid', 'twait')
  return nil
end
