--[[
  recordDelivery-2.lua
  Record one delivery attempt's outcome, only while the caller's claim still holds
  (the due score equals the claim it was given): a worker whose lease ran out and
  was taken over by another records nothing. Delivered -> leaves the due set;
  failed -> due again after delay_ms, or dead when that is past created + window.

  KEYS[1] due set                sw:{cb}:due
  KEYS[2] delivery hash          sw:{cb}:d:<id>

  ARGV[1] delivery id
  ARGV[2] claim                  the score claimDeliveries-1 set
  ARGV[3] outcome                "ok" | "fail"
  ARGV[4] status code            HTTP status, or "" (no answer)
  ARGV[5] error                  "" or a short reason (timeout, connect error, refused address)
  ARGV[6] delay_ms               wait before the next attempt (failures)
  ARGV[7] window_ms              no attempt starts later than created_ms + window_ms
  ARGV[8] log_max                attempts kept in the record's log (the count goes on)

  Returns {1, state, next_ms, attempts}         recorded; state delivered | pending | dead
          {-7}                                  NOT_FOUND: the claim was lost (or the record is gone)
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local id = ARGV[1]
local score = rcall('ZSCORE', KEYS[1], id)
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return {NOT_FOUND}
end
local created = tonumber(rcall('HGET', KEYS[2], 'created_ms') or '')
if not created then
  rcall('ZREM', KEYS[1], id)
  return {NOT_FOUND}
end
local now = redis_now_ms()
local attempt = {at_ms = now, status_code = tonumber(ARGV[4]) or cjson.null}
if ARGV[5] ~= '' then attempt['error'] = ARGV[5] end
local log = cjson.decode(rcall('HGET', KEYS[2], 'log') or '[]')
if type(log) ~= 'table' then log = {} end
log[#log + 1] = attempt
local keep = tonumber(ARGV[8])
while #log > keep do table.remove(log, 1) end
local n = rcall('HINCRBY', KEYS[2], 'attempts', 1)
rcall('HSET', KEYS[2], 'log', cjson.encode(log), 'last_ms', now, 'last_status', ARGV[4])
local state, next_ms = 'pending', 0
if ARGV[3] == 'ok' then
  state = 'delivered'
  rcall('ZREM', KEYS[1], id)
  rcall('HSET', KEYS[2], 'state', state, 'delivered_ms', now, 'next_ms', '')
else
  next_ms = now + tonumber(ARGV[6])
  if next_ms > created + tonumber(ARGV[7]) then
    state = 'dead'
    next_ms = 0
    rcall('ZREM', KEYS[1], id)
    rcall('HSET', KEYS[2], 'state', state, 'dead_ms', now, 'next_ms', '')
  else
    rcall('ZADD', KEYS[1], next_ms, id)
    rcall('HSET', KEYS[2], 'state', state, 'next_ms', next_ms)
  end
end
return {OK, state, next_ms, n}
