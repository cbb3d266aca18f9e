-- Take (or renew) the lease on a running re-drive: one runner at a time, whoever it is. A lease
-- of 0 ms from its holder lets it go (it expires now, another runner takes over at once).
-- KEYS[1] re-drive hash   ARGV[1] runner name  ARGV[2] lease ms
-- Returns 1 when this runner holds it now, 0 otherwise (another holds a live lease, or it ended).
local now = now_ms()
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'lease_ms')
if r[1] ~= 'running' then return 0 end
if r[2] and r[2] ~= '' and r[2] ~= ARGV[1] and (tonumber(r[3]) or 0) > now then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_ms', now + tonumber(ARGV[2]))
return 1
