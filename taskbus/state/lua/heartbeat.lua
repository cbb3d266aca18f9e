-- Redis Streams: renew the leases of running entries (their idle time). Ownership is checked first: XCLAIM alone would take an
-- entry back from the worker that reclaimed it.
-- KEYS[1] work stream   ARGV[1] group  ARGV[2] consumer  ARGV[3..] entry ids
-- Returns the entry ids this consumer no longer holds.
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #pending == 0 then
    lost[#lost + 1] = ARGV[i]
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return lost
