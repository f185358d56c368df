--[[
  peekInbox-5.lua
  What a session's owner needs to pick its next input, in one round trip: the
  ids, run ids and multitask modes of the oldest pending inputs (the lookahead
  for interrupting inputs), the first one in full (only when asked), its run
  state (a previous owner may have ended it already) and whether its
  cancellation was requested.

  With a token (the owner about to run the head), it also records, fenced, which
  owners took the head input: meta head_taken = "<entry id>|<token>|<owners>",
  counting each new token once. An input that took down every owner it met is
  seen here even when no run.started of it ever reached the log (the owner died
  before shipping it): poison detection needs this count in Redis.

  Only the head input travels in full: inputs may be large (up to the API's
  input cap each), and an owner that read and parsed a whole window of them on
  every look stalled its event loop. The window is read in small chunks, so the
  script never holds more than a few inputs at once.

  KEYS[1] inbox key              sw:{S}:inbox
  KEYS[2] runs key               sw:{S}:runs
  KEYS[3] cancels key            sw:{S}:cancels
  KEYS[4] meta key               sw:{S}:meta
  KEYS[5] epoch key              sw:{S}:epoch

  ARGV[1] count                  inputs to look at, at most
  ARGV[2] with_head              1: return the first input's fields in full; 0: not
  ARGV[3] token                  the owner's fencing token; 0: record nothing

  Returns {1, metas, head, state, cancel, owners}
                                                metas: flat {id, run_id, multitask, ...}
                                                for up to count inputs, oldest first (empty
                                                when the inbox is); head: the first input's
                                                field/value list as XRANGE returns it ({}
                                                when empty or not asked); state: the first
                                                input's run state JSON ("" when none);
                                                cancel: 1 when its cancellation was requested;
                                                owners: owners that took the head so far,
                                                this one included (0: nothing recorded)
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
local owners = 0
local token = tonumber(ARGV[3]) or 0
if #metas > 0 and ARGV[2] == '1' and token >= 1 and token == tonumber(rcall('GET', KEYS[5]) or '0') then
  local head_id = metas[1]
  owners = 1
  local taken = rcall('HGET', KEYS[4], 'head_taken')
  if taken then
    local id, tok, n = string.match(taken, '^([^|]*)|([^|]*)|(%d+)$')
    if id == head_id then
      owners = tonumber(n)
      if tok ~= ARGV[3] then
        owners = owners + 1
      end
    end
  end
  rcall('HSET', KEYS[4], 'head_taken', head_id .. '|' .. ARGV[3] .. '|' .. owners)
end
return {OK, metas, head, state, cancel, owners}
