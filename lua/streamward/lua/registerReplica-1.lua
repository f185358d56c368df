--[[
  registerReplica-1.lua
  Register a replica lease under a fresh incarnation. A newer incarnation of the
  same replica id always replaces an older one: the old incarnation then finds
  its lease LOST on renewal and its sessions become eligible for takeover.

  KEYS[1] replica key            sw:replica:{R}

  ARGV[1] incarnation            nonce minted at process start
  ARGV[2] ttl_ms                 replica lease TTL
  ARGV[3..] field, value, ...    descriptive fields (host, pod, version, capacity)

  Returns {1, now_ms, previous_incarnation}   previous_incarnation is "" when none
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local now = redis_now_ms()
local prev = rcall('HGET', KEYS[1], 'incarnation') or ''
rcall('DEL', KEYS[1])
rcall('HSET', KEYS[1], 'incarnation', ARGV[1], 'started_ms', now, 'heartbeat_ms', now,
  'draining', '0')
for i = 3, #ARGV, 2 do
  rcall('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
rcall('PEXPIRE', KEYS[1], ARGV[2])
return {OK, now, prev}
