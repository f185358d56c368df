--[[
  peekInbox-3.lua
  What a session's owner needs to pick its next input, in one round trip: the
  ids, run ids and multitask modes of the oldest pending inputs (the lookahead
  for interrupting inputs), the first one in full (only when asked), its run
  state (a previous owner may have ended it already) and whether its
  cancellation was requested. Read-only.

  Only the head input travels in full: inputs may be large (up to the API's
  input cap each), and an owner that read and parsed a whole window of them on
  every look stalled its event loop. The window is read in small chunks, so the
  script never holds more than a few inputs at once.

  KEYS[1] inbox key              sw:{S}:inbox
  KEYS[2] runs key               sw:{S}:runs
  KEYS[3] cancels key            sw:{S}:cancels

  ARGV[1] count                  inputs to look at, at most
  ARGV[2] with_head              1: return the first input's fields in full; 0: not

  Returns {1, metas, head, state, cancel}       metas: flat {id, run_id, multitask, ...}
                                                for up to count inputs, oldest first (empty
                                                when the inbox is); head: the first input's
                                                field/value list as XRANGE returns it ({}
                                                when empty or not asked); state: the first
                                                input's run state JSON ("" when none);
                                                cancel: 1 when its cancellation was requested
]]
--- @include "includes/statusCodes"
local rcall = redis.call
local count = tonumber(ARGV[1])
local CHUNK = 8
local metas, head = {}, {}
local state, cancel = '', 0
local seen, start, want = 0, '-', 1
while seen < count do
  local chunk = rcall('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(want, count - seen))
  for _, entry in ipairs(chunk) do
    local fields = entry[2]
    local run_id, multitask = '', 'enqueue'
    for i = 1, #fields, 2 do
      if fields[i] == 'run_id' then
        run_id = fields[i + 1]
      elseif fields[i] == 'multitask' then
        multitask = fields[i + 1]
      end
    end
    if seen == 0 then
      if ARGV[2] == '1' then
        head = fields
      end
      state = rcall('HGET', KEYS[2], run_id) or ''
      cancel = rcall('SISMEMBER', KEYS[3], run_id)
    end
    metas[#metas + 1] = entry[1]
    metas[#metas + 1] = run_id
    metas[#metas + 1] = multitask
    seen = seen + 1
  end
  if #chunk < want then
    break
  end
  start = '(' .. chunk[#chunk][1]
  want = CHUNK
end
return {OK, metas, head, state, cancel}
