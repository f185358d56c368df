--[[
  claimLock-1.lua
  Take or extend a simple named lock (the watchdog election): succeeds when the
  key is free or already names the caller.

  KEYS[1] lock key               sw:watchdog

  ARGV[1] owner                  "<replica_id>:<incarnation>"
  ARGV[2] ttl_ms

  Returns {1}                                   held by the caller
          {0, owner, pttl_ms}                   held by someone else
]]
--- @include "includes/statusCodes"
local rcall = redis.call
local cur = rcall('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  return {0, cur, rcall('PTTL', KEYS[1])}
end
rcall('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {OK}
