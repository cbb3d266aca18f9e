-- Read which delayed tasks are due by the server's clock (never the host's), and when the next is.
-- KEYS[1] delayed zset (or the Kafka outbox)   ARGV[1] limit   ARGV[2] optional age ms: due only
-- when older than this (the outbox sweep)
-- Returns {due ids, ms until the next not-yet-due task or -1}.
local now = now_ms()
now = now - tonumber(ARGV[2] or '0')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local wait = -1
if #nxt > 0 then wait = tonumber(nxt[2]) - now end
return {due, wait}
