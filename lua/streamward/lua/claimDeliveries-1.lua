--[[
  claimDeliveries-1.lua
  Claim up to `limit` due deliveries for one worker: each claimed id's score moves
  to now + lease_ms, so no other worker sees it due until the lease ends (a crashed
  worker's claims come due again then). The new score is the claim's token: only
  the worker holding it records the attempt's outcome (recordDelivery-2).

  KEYS[1] due set                sw:{cb}:due

  ARGV[1] lease_ms
  ARGV[2] limit

  Returns {1, now_ms, id1, claim1, id2, claim2, ...}
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local now = redis_now_ms()
local claim = now + tonumber(ARGV[1])
local due = rcall('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {OK, now}
for _, id in ipairs(due) do
  rcall('ZADD', KEYS[1], claim, id)
  out[#out + 1] = id
  out[#out + 1] = claim
end
return out
