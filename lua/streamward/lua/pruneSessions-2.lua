--[[
  pruneSessions-2.lua
  Score-checked removal of sessions whose keys are gone (expired after retention) from
  a project's listing indexes: a session leaves only while its activity score is still
  the one the lister read, so one created again meanwhile (a newer score) stays.

  KEYS[1] activity index         sw:project:{<project>}:sessions:updated
  KEYS[2] creation index         sw:project:{<project>}:sessions:created

  ARGV[1..] per entry: session_id, activity score read

  Returns {1, removed}
]]
--- @include "includes/statusCodes"
local rcall = redis.call
local removed = 0
for i = 1, #ARGV, 2 do
  local score = rcall('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + rcall('ZREM', KEYS[1], ARGV[i])
    rcall('ZREM', KEYS[2], ARGV[i])
  end
end
return {OK, removed}
