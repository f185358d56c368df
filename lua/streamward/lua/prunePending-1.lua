--[[
  prunePending-1.lua
  Score-checked removal from the pending index: a session leaves the index only
  when its score is still at most what the sweeper read, so an enqueue's fresh
  ZADD that raced the sweep keeps its entry.

  KEYS[1] pending index          sw:pending

  ARGV[1..] per entry: ref, max_score

  Returns {1, removed}
]]
--- @include "includes/statusCodes"
local rcall = redis.call
local removed = 0
for i = 1, #ARGV, 2 do
  local score = rcall('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[i + 1]) then
    removed = removed + rcall('ZREM', KEYS[1], ARGV[i])
  end
end
return {OK, removed}
