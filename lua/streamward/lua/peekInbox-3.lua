--[[
  peekInbox-3.lua
  What a session's owner needs to pick its next input, in one round trip: the
  oldest pending inputs, and for the first one its run state (a previous owner
  may have ended it already) and whether its cancellation was requested.
  Read-only.

  KEYS[1] inbox key              sw:{S}:inbox
  KEYS[2] runs key               sw:{S}:runs
  KEYS[3] cancels key            sw:{S}:cancels

  ARGV[1] count                  inputs to return at most

  Returns {1, items, state, cancel}             items as XRANGE returns them (oldest first,
                                                empty when the inbox is); state: the first
                                                item's run state JSON ("" when none);
                                                cancel: 1 when its cancellation was requested
]]
--- @include "includes/statusCodes"
local rcall = redis.call
local items = rcall('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])
local state, cancel = '', 0
if items[1] then
  local fields = items[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'run_id' then
      state = rcall('HGET', KEYS[2], fields[i + 1]) or ''
      cancel = rcall('SISMEMBER', KEYS[3], fields[i + 1])
      break
    end
  end
end
return {OK, items, state, cancel}
