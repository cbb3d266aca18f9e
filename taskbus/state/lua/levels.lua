-- The priority levels of a queue that workers must read: the members of its set of levels in
-- use, less those whose stream is empty (nothing queued, nothing pending: they are dropped from
-- the set, so a queue whose priority tasks are all done is read as if priorities did not
-- exist; an enqueue or promotion at that level adds it again in the same step as its entry).
-- KEYS[1] the queue's set of levels  KEYS[2 + level] the work stream of each level 0-9
-- Returns the levels kept (strings).
local kept = {}
for _, level in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = tonumber(level)
  if n and n >= 0 and n <= 9 and n ~= 5 and redis.call('XLEN', KEYS[2 + n]) > 0 then
    kept[#kept + 1] = level
  else
    redis.call('SREM', KEYS[1], level)
  end
end
return kept
