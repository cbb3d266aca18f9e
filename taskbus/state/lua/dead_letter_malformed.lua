-- Dead-letter an entry the worker cannot even decode, so it never blocks or spins the loop.
-- KEYS[1] work stream  KEYS[2] dead-letter stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] entry id  ARGV[4] error JSON  ARGV[5] raw fields JSON
-- ARGV[6] dead-letter maxlen
-- Returns 1, or 0 when the entry is no longer pending for this consumer.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #pending == 0 then return 0 end
ack(KEYS[1], ARGV[1], ARGV[3])
dead_letter(KEYS[2], ARGV[6], '', '', '', ARGV[4], ARGV[5])
return 1
