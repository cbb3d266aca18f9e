-- Redis Streams with priorities: deliver to this consumer up to `count` new entries of one
-- queue's level streams, earliest virtual deadline first. An entry's deadline is its stream
-- id's time plus (9 - level) * max_delay / 9: level 9 is due when it arrives, level 0 after
-- PRIORITY_MAX_DELAY_S, so a task is overtaken only by work that arrived less than that after
-- it (bounded starvation), and entries of one level keep their FIFO order.
-- Each level's head (its oldest undelivered entries) is read without delivering anything: the
-- group's last-delivered-id (XINFO GROUPS) and XRANGE after it; then one XREADGROUP per chosen
-- level delivers exactly those entries (the script is atomic: nobody delivers in between).
-- KEYS[i] the work stream of level ARGV[4 + i]
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] count  ARGV[4] PRIORITY_MAX_DELAY_S in ms
-- Returns {level, entry id, {field, value, ...}} per delivered entry, in the chosen order.
local group, consumer, count, step = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]) / 9
local heads = {}
for i = 1, #KEYS do
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[i])
  local last, lag = nil, nil
  for _, g in ipairs(ok and groups or {}) do
    local name, delivered, behind = nil, nil, nil
    for j = 1, #g, 2 do
      local field = g[j]
      if field == 'name' then name = g[j + 1]
      elseif field == 'last-delivered-id' then delivered = g[j + 1]
      elseif field == 'lag' then behind = g[j + 1] end
    end
    if name == group then last, lag = delivered, behind break end
  end
  -- no stream or no group yet (the worker creates it), or nothing undelivered (a lag of 0; the
  -- lag is nil when Redis cannot tell): nothing to read here
  if last and lag ~= 0 then
    local level = tonumber(ARGV[4 + i])
    heads[i] = {level = level, offset = (9 - level) * step, entries = redis.call('XRANGE', KEYS[i], '(' .. last,
      '+', 'COUNT', count), next = 1, taken = 0}
  end
end
local function deadline(h)
  local e = h.entries[h.next]
  if not e then return nil end
  return tonumber(string.match(e[1], '^(%d+)')) + h.offset
end
local order = {}
for _ = 1, count do
  local best, best_at = nil, nil
  for i, h in pairs(heads) do
    local at = deadline(h)
    if at and (not best_at or at < best_at or (at == best_at and h.level > heads[best].level)) then
      best, best_at = i, at
    end
  end
  if not best then break end
  local h = heads[best]
  order[#order + 1] = {best, h.next}
  h.next, h.taken = h.next + 1, h.taken + 1
end
local got = {}
for i, h in pairs(heads) do
  if h.taken > 0 then
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', h.taken, 'STREAMS', KEYS[i], '>')
    got[i] = reply[1][2]
  end
end
local out = {}
for _, o in ipairs(order) do
  local e = got[o[1]][o[2]]
  if e then out[#out + 1] = {heads[o[1]].level, e[1], e[2]} end
end
return out
