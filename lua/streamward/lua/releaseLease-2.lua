--[[
  releaseLease-2.lua
  Owner-checked release: deletes the lease only when it names the caller's
  replica, incarnation and token. The epoch is left alone; the next acquisition
  bumps it.

  KEYS[1] lease key              sw:{S}:lease
  KEYS[2] history key            sw:{S}:history

  ARGV[1] replica_id
  ARGV[2] incarnation
  ARGV[3] token
  ARGV[4] reason                 why the owner left (passivate, drain, ...)

  Returns {1}                                   released
          {-2, replica, incarnation, token}     NOT_OWNER: held by someone else
          {-7}                                  NOT_FOUND: no lease (expired or released)
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
--- @include "includes/history"
local rcall = redis.call
local h = rcall('HMGET', KEYS[1], 'replica', 'incarnation', 'token')
if not h[1] then
  return {NOT_FOUND}
end
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or h[3] ~= ARGV[3] then
  return {NOT_OWNER, h[1], h[2], tonumber(h[3])}
end
rcall('DEL', KEYS[1])
rcall('XADD', KEYS[2], 'MAXLEN', '~', HISTORY_MAXLEN, '*',
  unpack(history('released', ARGV[1], ARGV[2], ARGV[3], ARGV[4], redis_now_ms())))
return {OK}
