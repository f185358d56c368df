--[[
  addDelivery-3.lua
  Put one callback delivery in the outbox, once: the delivery id is derived from
  the run and the entry's seq, so the same entry ingested twice (a runner's retry)
  finds the record and writes nothing. A new delivery is due at once.

  KEYS[1] due set                sw:{cb}:due           delivery id -> due ms (or claim expiry)
  KEYS[2] delivery hash          sw:{cb}:d:<id>
  KEYS[3] run's delivery list    sw:{cb}:run:<run_id>:dl

  ARGV[1] delivery id
  ARGV[2] retention_ms           the record and the run's list expire this long after the last write
  ARGV[3..] field, value, ...    the record's fields (run_id, project, session_id, event, seq, url, body)

  Returns {1, created_ms}                       added (due now)
          {2, created_ms}                       DUPLICATE: already in the outbox, nothing written
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local id = ARGV[1]
local existing = rcall('HGET', KEYS[2], 'created_ms')
if existing then
  return {DUPLICATE, tonumber(existing)}
end
local now = redis_now_ms()
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
rcall('HSET', KEYS[2], 'id', id, 'created_ms', now, 'state', 'pending', 'attempts', 0,
  'next_ms', now, 'log', '[]', unpack(fields))
rcall('PEXPIRE', KEYS[2], ARGV[2])
rcall('RPUSH', KEYS[3], id)
rcall('PEXPIRE', KEYS[3], ARGV[2])
rcall('ZADD', KEYS[1], now, id)
return {OK, now}
