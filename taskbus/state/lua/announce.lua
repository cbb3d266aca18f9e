-- A worker says it is alive, which task types it has handlers for and what it is (host, pid,
-- queues, concurrency, in flight, version: `info`), in its queue's workers hash (consumer ->
-- JSON {seen_ms, handlers, info}), stamped by the server's clock; entries not seen for ARGV[3]
-- ms are removed. With ARGV[2] = '' the worker leaves (a clean stop).
-- KEYS[1] workers hash   ARGV[1] consumer  ARGV[2] handler table JSON, or ''  ARGV[3] forget after ms
--   ARGV[4] info JSON
-- Returns the number of workers left in the hash.
local now = now_ms()
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], '{"seen_ms":' .. now .. ',"handlers":' .. ARGV[2] .. ',"info":' ..
    (ARGV[4] or '{}') .. '}')
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, w = pcall(cjson.decode, all[i + 1])
  if not ok or type(w) ~= 'table' or (tonumber(w.seen_ms) or 0) < now - tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return redis.call('HLEN', KEYS[1])
