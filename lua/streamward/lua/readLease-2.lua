--[[
  readLease-2.lua
  Read one session's lease. renewed_ms is derived from the remaining TTL
  (renewals only PEXPIRE): now - (ttl_ms - pttl). The holder's replica lease lives in another slot, so
  the facade reads it with a second single-key call (see lua/leases.py).

  KEYS[1] lease key              sw:{S}:lease
  KEYS[2] epoch key              sw:{S}:epoch

  Returns {1, replica, incarnation, token, acquired_ms, renewed_ms, pttl_ms, epoch}
          {-7, epoch}                           NOT_FOUND: no lease held
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local epoch = tonumber(rcall('GET', KEYS[2]) or '0')
local h = rcall('HMGET', KEYS[1], 'replica', 'incarnation', 'token', 'acquired_ms', 'renewed_ms',
  'ttl_ms')
if not h[1] then
  return {NOT_FOUND, epoch}
end
local pttl = rcall('PTTL', KEYS[1])
local renewed = tonumber(h[5])
if h[6] and pttl >= 0 then
  local now = redis_now_ms()
  -- renewals use the TTL the lease was acquired with; clamp for safety
  renewed = math.min(now, math.max(renewed, now - (tonumber(h[6]) - pttl)))
end
return {OK, h[1], h[2], tonumber(h[3]), tonumber(h[4]), renewed, pttl, epoch}
