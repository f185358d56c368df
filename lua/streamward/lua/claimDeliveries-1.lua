--[[
  claimDeliveries-1.lua
  Claim up to `limit` due deliveries for one worker: each claimed id's score moves
  to now + lease_ms, so no other worker sees it due until the lease ends (a crashed
  worker's claims come due again then). The new score is the claim's token (always
  above the score it replaces): only the worker holding it records the attempt's
  outcome (recordDelivery-2).

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
local due = rcall('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]))
local out = {OK, now}
for i = 1, #due, 2 do
  local id = due[i]
  -- strictly above the score it replaces: every claim of one id is a distinct token
  local mine = math.max(claim, tonumber(due[i + 1]) + 1)
  rcall('ZADD', KEYS[1], mine, id)
  out[#out + 1] = id
  out[#out + 1] = mine
end
return out
