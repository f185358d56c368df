--[[
  notifyReplica-2.lua
  Mail a session's owner, only while its replica lease still names the
  incarnation that holds the session lease: "is the owner alive?" and "tell
  it" in one round trip. Nothing is written for a dead (or re-registered)
  replica, whose mailbox nobody reads: the caller puts the session on the work
  queue instead.

  KEYS[1] replica lease key      sw:replica:{R}
  KEYS[2] mailbox key            sw:replica:{R}:mail

  ARGV[1] incarnation            the one named by the session lease
  ARGV[2] kind                   input | cancel | wake
  ARGV[3] session                project/session_id
  ARGV[4] run_id                 "" when the mail names no run
  ARGV[5] maxlen                 approximate mailbox cap
  ARGV[6] multitask              the input's mode, for kind input ("" or absent: not named;
                                 the owner then treats the input as one that may interrupt)

  Returns {1, mail_id}                          delivered
          {0}                                   replica lease gone or another incarnation
]]
--- @include "includes/statusCodes"
local rcall = redis.call
if rcall('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then
  return {0}
end
local fields = {'kind', ARGV[2], 'session', ARGV[3], 'run_id', ARGV[4]}
if (ARGV[6] or '') ~= '' then
  fields[#fields + 1] = 'multitask'
  fields[#fields + 1] = ARGV[6]
end
local id = rcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
return {OK, id}
