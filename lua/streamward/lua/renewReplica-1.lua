--[[
  renewReplica-1.lua
  Renew a replica lease. Never recreates a lease that is gone or that names
  another incarnation: that replica has lost everything and must re-register.

  KEYS[1] replica key            sw:replica:{R}

  ARGV[1] incarnation            the caller's incarnation
  ARGV[2] ttl_ms                 replica lease TTL
  ARGV[3..] field, value, ...    status fields to refresh (leases, inflight, draining)

  Returns {1, now_ms}                           renewed
          {-4, current_incarnation}             REPLICA_LOST ("" when the key is gone)

  PEXPIRE comes first, on purpose: it is not a "denyoom" command, and Redis 7 refuses
  a script under maxmemory only at its first denyoom call made before any write. So a
  full Redis (noeviction) still renews the lease on 6.2 and 7, and the HSETs after it
  only overwrite fields that exist (no growth), keeping the whole fleet from fencing.
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local cur = rcall('HGET', KEYS[1], 'incarnation')
if not cur then
  return {REPLICA_LOST, ''}
end
if cur ~= ARGV[1] then
  return {REPLICA_LOST, cur}
end
local now = redis_now_ms()
rcall('PEXPIRE', KEYS[1], ARGV[2])
rcall('HSET', KEYS[1], 'heartbeat_ms', now)
for i = 3, #ARGV, 2 do
  rcall('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return {OK, now}
