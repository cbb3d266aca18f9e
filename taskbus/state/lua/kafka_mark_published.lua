-- Kafka channel: the broker acknowledged these tasks' records. Each stays in the outbox until
-- a worker starts it (kafka_start takes it out), stamped so the outbox sweep publishes it again if
-- no worker has started it KAFKA_REDELIVER_S from now: a broker that lost an acknowledged
-- record (an in-memory broker restarted, say) or a record no consumer reads must not leave a
-- task queued forever. A duplicate record is harmless: the fenced start runs a task once.
-- KEYS[1] outbox zset   ARGV[1] ms to add to now (KAFKA_REDELIVER_S - KAFKA_OUTBOX_AGE_S: the
-- sweep takes entries older than KAFKA_OUTBOX_AGE_S)   ARGV[1+i] task id
local at = now_ms() + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', at, ARGV[i])
end
return #ARGV - 1
