-- Redis Streams: renew the leases of running entries (their idle time). Ownership is checked
-- first (one XPENDING for them all, see pending_of): XCLAIM alone would take an entry back from
-- the worker that reclaimed it. The entries still held are renewed in one XCLAIM.
-- KEYS[1] work stream   ARGV[1] group  ARGV[2] consumer  ARGV[3..] entry ids
-- Returns the entry ids this consumer no longer holds.
local entries = {}
for i = 3, #ARGV do entries[#entries + 1] = ARGV[i] end
local mine = pending_of(KEYS[1], ARGV[1], ARGV[2], entries)
local held, lost = {}, {}
for _, entry in ipairs(entries) do
  if mine[entry] then held[#held + 1] = entry else lost[#lost + 1] = entry end
end
for from = 1, #held, 1000 do
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for j = from, math.min(from + 999, #held) do args[#args + 1] = held[j] end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return lost
