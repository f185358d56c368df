--[[
  advanceInbox-5.lua
  completeInput and peekInbox in one call (BullMQ's moveToFinished with fetch
  next): the owner marks the input its run just ended consumed (fenced, as
  completeInput-3) and gets what it needs to pick its next input (as
  peekInbox-5 with with_head = 1 and its token: the new head's take is
  recorded). One round trip between two runs of a session instead of two.

  KEYS[1] inbox key              sw:{S}:inbox
  KEYS[2] runs key               sw:{S}:runs
  KEYS[3] cancels key            sw:{S}:cancels
  KEYS[4] meta key               sw:{S}:meta
  KEYS[5] epoch key              sw:{S}:epoch

  ARGV[1] token                  the owner's fencing token
  ARGV[2] entry_id               inbox entry consumed
  ARGV[3] count                  inputs to look at, at most
  ARGV[4] announce               as peekInbox-5's ARGV[4]
  ARGV[5] poison_after           as peekInbox-5's ARGV[5]
  ARGV[6] session ref            as peekInbox-5's ARGV[6]
  ARGV[7] replica id             as peekInbox-5's ARGV[7]

  Returns {1, metas, head, state, cancel, owners, announced}
                                                    as peekInbox-5, after the XDEL
          {-3, epoch}                               STALE_TOKEN: nothing written
]]
--- @include "includes/statusCodes"
--- @include "includes/peekInbox"
local epoch = tonumber(redis.call('GET', KEYS[5]) or '0')
local token = tonumber(ARGV[1])
if token == nil or token < 1 or token ~= epoch then
  return {STALE_TOKEN, epoch}
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[4], 'inbox_cursor', ARGV[2])
local notice = nil
if ARGV[4] == '1' then
  notice = {ref = ARGV[6], replica = ARGV[7], poison_after = tonumber(ARGV[5]) or 0}
end
return peek_inbox(tonumber(ARGV[3]), '1', ARGV[1], notice)
