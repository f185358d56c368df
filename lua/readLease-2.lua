--[[
  readLease-2.lua
  Read one session's lease. The holder's replica lease lives in another slot, so
  the facade reads it with a second single-key call (see lua/store.py).

  KEYS[1] lease key              sw:{S}:lease
  KEYS[2] epoch key              sw:{S}:epoch

  Returns {1, replica, incarnation, token, acquired_ms, renewed_ms, pttl_ms, epoch}
          {-7, epoch}                           NOT_FOUND: no lease held
]]
local rcall = redis.call
local epoch = tonumber(rcall('GET', KEYS[2]) or '0')
local h = rcall('HMGET', KEYS[1], 'replica', 'incarnation', 'token', 'acquired_ms', 'renewed_ms')
if not h[1] then
  return {-7, epoch}
end
return {1, h[1], h[2], tonumber(h[3]), tonumber(h[4]), tonumber(h[5]), rcall('PTTL', KEYS[1]), epoch}
