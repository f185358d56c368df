--[[
  completeInput-3.lua
  Fenced advance of the inbox cursor: the owner marks an input consumed (its run
  reached a terminal entry) and removes it from the inbox, so XLEN = pending.
  Accepted only when token == epoch >= 1 (a never-acquired session accepts nobody).

  KEYS[1] epoch key              sw:{S}:epoch
  KEYS[2] inbox key              sw:{S}:inbox
  KEYS[3] meta key               sw:{S}:meta

  ARGV[1] token                  caller's fencing token
  ARGV[2] entry_id               inbox entry consumed

  Returns {1, pending}                          cursor advanced
          {-3, epoch}                           STALE_TOKEN
]]
--- @include "includes/statusCodes"
local rcall = redis.call
local epoch = tonumber(rcall('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token == nil or token < 1 or token ~= epoch then
  return {STALE_TOKEN, epoch}
end
rcall('XDEL', KEYS[2], ARGV[2])
rcall('HSET', KEYS[3], 'inbox_cursor', ARGV[2])
return {OK, rcall('XLEN', KEYS[2])}
