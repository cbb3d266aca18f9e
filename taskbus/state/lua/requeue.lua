-- Retry a failed or cancelled task: back to `queued` as a new series of attempts (see `requeue`).
-- KEYS[1] task hash  KEYS[2] work stream or outbox  KEYS[3] delayed zset  KEYS[4] dead-letter stream
-- ARGV[1] task id  ARGV[2] actor  ARGV[3] target kind ('stream' | 'outbox')  ARGV[4] pending TTL s
-- Returns {'queued'}, {'missing'} or {'conflict', status}.
local now = now_ms()
local out = requeue(KEYS[1], KEYS[2], ARGV[3], KEYS[3], KEYS[4], '', ARGV[1], now, ARGV[4], nil)
if out[1] == 'queued' then audit(KEYS[1], now, ARGV[2], 'retry', '') end
return out
