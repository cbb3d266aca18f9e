-- Dead-letter an entry the worker cannot even decode, so it never blocks or spins the loop.
-- KEYS[1] work stream  KEYS[2] dead-letter stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] entry id  ARGV[4] error JSON  ARGV[5] raw fields JSON
-- ARGV[6] dead-letter maxlen
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #pending == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'id', '', 'error', ARGV[4], 'entry', ARGV[5])
return 1
