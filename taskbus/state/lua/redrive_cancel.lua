-- Cancel a running re-drive: the next step of whoever runs it is fenced off. What moved stays moved.
-- KEYS[1] re-drive hash  KEYS[2] active re-drives set   ARGV[1] re-drive id  ARGV[2] actor
-- Returns {'cancelled'} or {'ended', state} ('' when unknown).
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'running' then return {'ended', state or ''} end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_ms', now_ms(), 'cancelled_by', ARGV[2], 'owner', '')
redis.call('SREM', KEYS[2], ARGV[1])
return {'cancelled'}
