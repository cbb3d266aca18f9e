-- One step of a re-drive, fenced by its lease and its cursor: the given dead letters go back to
-- `queued` (see `requeue`) and leave the dead-letter stream, and the cursor moves past the
-- entries scanned, all at once. A step lands once or not at all, so a runner killed at any
-- point moves nothing twice, and the next runner goes on from the cursor.
-- KEYS[1] re-drive hash  KEYS[2] dead-letter stream  KEYS[3] work stream or outbox  KEYS[4] delayed zset
--   KEYS[5] active re-drives set  then per entry i: KEYS[5+i] task hash
-- ARGV[1] runner name  ARGV[2] lease ms  ARGV[3] cursor the step starts from  ARGV[4] cursor after it
--   ARGV[5] target kind  ARGV[6] pending TTL s  ARGV[7] scanned count  ARGV[8] '1' when this is the last step
--   ARGV[9] re-drive id  then per entry i (3 each, from ARGV[7+3i]): dead entry id, task id,
--   the dead-letter record as JSON (recreates a task whose record expired)
-- Returns {'ok', moved, skipped} or {'fenced', why}.
local now = now_ms()
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'cursor', 'created_by')
if r[1] ~= 'running' then return {'fenced', r[1] or 'missing'} end
if r[2] ~= ARGV[1] then return {'fenced', 'lease'} end
if r[3] ~= ARGV[3] then return {'fenced', 'cursor'} end
local moved, skipped = 0, 0
for i = 1, #KEYS - 5 do
  local a = 7 + 3 * i
  local entry, id = ARGV[a], ARGV[a + 1]
  if #redis.call('XRANGE', KEYS[2], entry, entry) == 0 then
    skipped = skipped + 1  -- gone meanwhile (retried by hand, purged, trimmed)
  else
    local out = requeue(KEYS[5 + i], KEYS[3], ARGV[5], KEYS[4], KEYS[2], entry, id, now, ARGV[6],
      cjson.decode(ARGV[a + 2]))
    if out[1] == 'queued' then
      moved = moved + 1
      audit(KEYS[5 + i], now, r[4] or '', 'redrive', ARGV[9])
    else
      skipped = skipped + 1
    end
  end
end
redis.call('HSET', KEYS[1], 'cursor', ARGV[4], 'lease_ms', now + tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'moved', moved)
redis.call('HINCRBY', KEYS[1], 'skipped', skipped)
redis.call('HINCRBY', KEYS[1], 'scanned', tonumber(ARGV[7]))
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'finished_ms', now, 'owner', '')
  redis.call('SREM', KEYS[5], ARGV[9])
end
return {'ok', moved, skipped}
