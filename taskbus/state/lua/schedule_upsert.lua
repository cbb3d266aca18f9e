-- Store a schedule's definition (a worker's start-up sync): safe however many workers deploy at
-- once. The same version changes nothing; a new one replaces the old and counts a generation,
-- and its slots start after now (the old definition's due slots are not fired under the new one).
-- KEYS[1] the schedule hash, KEYS[2] the queue's set of schedule names
-- ARGV[1] name, ARGV[2] version (digest of the definition), ARGV[3] definition JSON
-- Returns {'same' | 'created' | 'changed', generation}
local f = redis.call('HMGET', KEYS[1], 'version', 'generation', 'last_s')
if f[1] == ARGV[2] then return {'same', tonumber(f[2])} end
local now = now_ms()
local verdict = 'changed'
if not f[1] then verdict = 'created' end
local last = math.max(tonumber(f[3]) or 0, math.floor(now / 1000))
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'def', ARGV[3], 'version', ARGV[2], 'updated_ms', now, 'last_s', last)
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('SADD', KEYS[2], ARGV[1])
return {verdict, generation}
