-- Fire a schedule's due slots: compare them with its last fired slot, advance it, and enqueue
-- each slot's task, in one step on the server's clock. Any number of workers may call this for
-- the same slot: a slot at or before `last_s` is never fired again, and a slot's task id is
-- fixed (the caller derives it from the schedule name and slot), so an existing task record is
-- a second fence.
-- KEYS[1] the schedule hash, KEYS[2] the queue's scheduler heartbeat (exists while some
--   scheduler looked within the last few seconds), KEYS[3] the channel target: the stream
--   (XADD), or on Kafka the delayed zset (ZADD due now: the next promotion publishes it),
--   KEYS[4] the delayed zset, KEYS[5] the task hash of the schedule's last task (for
--   overlap=false; else any key), KEYS[5 + i] the task hash of candidate i
-- ARGV[1] the definition version the caller fires, ARGV[2] target kind ('stream' | 'outbox'),
--   ARGV[3] the last task id the caller assumes ('' none), ARGV[4..10] the task: type, queue,
--   payload JSON, max_attempts, timeout_s, pending TTL s, fields left to the handler's defaults,
--   ARGV[11] overlap ('1' | '0'), ARGV[12] misfire ('skip' | 'once' | 'all'), ARGV[13] max_catchup,
--   then per candidate i (oldest first) ARGV[12 + 2i] slot (epoch s), ARGV[13 + 2i] its task id
-- Returns {verdict, now_ms, last_s, last_task, {fired ids}}; verdict 'ok', 'stale' (the stored
-- version differs: reload) or 'prev' (last_task differs from ARGV[3]: call again with it).
local now = now_ms()
local now_s = math.floor(now / 1000)
local f = redis.call('HMGET', KEYS[1], 'version', 'last_s', 'last_task', 'paused')
if f[1] ~= ARGV[1] then return {'stale', now, 0, '', {}} end
local last, last_task = tonumber(f[2]) or 0, f[3] or ''
local overlap = ARGV[11] == '1'
if not overlap and last_task ~= ARGV[3] then return {'prev', now, last, last_task, {}} end
local due = {}
for i = 14, #ARGV, 2 do
  local slot = tonumber(ARGV[i])
  if slot > last and slot <= now_s then due[#due + 1] = i end
end
if #due == 0 then return {'ok', now, last, last_task, {}} end
-- Slots due while no scheduler looked were missed: the misfire policy picks which still fire.
local first = 1
if f[4] then
  first = #due + 1  -- paused: the slots pass unfired
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  if ARGV[12] == 'skip' then
    first = #due + 1
  elseif ARGV[12] == 'once' then
    first = #due
  else
    first = math.max(1, #due - tonumber(ARGV[13]) + 1)
  end
  if first > 1 then  -- say what passed unfired, for operators (and the tests)
    redis.call('HSET', KEYS[1], 'missed_ms', now, 'missed_from_s', last, 'missed_to_s', ARGV[due[#due]])
  end
end
local running = false
if not overlap and last_task ~= '' then
  local status = redis.call('HGET', KEYS[5], 'status')
  running = status and not is_terminal(status)
end
local task_args = {'', ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], 0, ARGV[9], '', ARGV[10]}
local fired = {}
for j = first, #due do
  local i = due[j]
  local task = KEYS[6 + (i - 14) / 2]
  if not running and redis.call('EXISTS', task) == 0 then
    task_args[1] = ARGV[i + 1]
    record_task(task, KEYS[3], KEYS[4], ARGV[2] == 'outbox', now, task_args, 1)
    fired[#fired + 1] = ARGV[i + 1]
    last_task = ARGV[i + 1]
    running = not overlap
  end
end
last = tonumber(ARGV[due[#due]])
redis.call('HSET', KEYS[1], 'last_s', last, 'last_task', last_task)
return {'ok', now, last, last_task, fired}
