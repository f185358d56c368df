--[[
  updateSession-4.lua
  PATCH a session's title and metadata (the merge is computed by the caller),
  compare-and-set on the metadata text it read, and announce it: with no lease
  held (nobody counts seqs), the script appends the `session.updated` entry
  itself at seq last + 1; with a lease held, the owner is the log's only writer,
  so the holder is returned and the caller mails it (the owner ships the entry
  with its next seq). An owner acquiring later reads the last seq after its
  acquisition, so it counts on from the entry written here.

  KEYS[1] meta key               sw:{S}:meta
  KEYS[2] log key                sw:{S}:log
  KEYS[3] lease key              sw:{S}:lease
  KEYS[4] epoch key              sw:{S}:epoch

  ARGV[1] expected metadata      the metadata text the caller merged into ("" = none stored)
  ARGV[2] metadata               the merged JSON object text
  ARGV[3] title mode             keep | set | delete
  ARGV[4] title
  ARGV[5] entry data             JSON text of the session.updated entry

  Returns {1, 1, updated_ms, seq, replica, incarnation}
                                                updated; seq of the entry written here
                                                (0 when a lease is held: replica and
                                                incarnation name the holder, else "")
          {1, 0}                                the metadata changed since it was read:
                                                merge again
          {-7}                                  NOT_FOUND: no live session
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local info = rcall('HMGET', KEYS[1], 'created_ms', 'delete_after_ms', 'metadata')
if not info[1] or info[2] then
  return {NOT_FOUND}
end
if (info[3] or '') ~= ARGV[1] then
  return {OK, 0}
end
local now = redis_now_ms()
rcall('HSET', KEYS[1], 'metadata', ARGV[2], 'updated_ms', now)
if ARGV[3] == 'set' then
  rcall('HSET', KEYS[1], 'title', ARGV[4])
elseif ARGV[3] == 'delete' then
  rcall('HDEL', KEYS[1], 'title')
end
local holder = rcall('HMGET', KEYS[3], 'replica', 'incarnation')
if holder[1] then
  return {OK, 1, now, 0, holder[1], holder[2] or ''}
end
local last = 0
local tail = rcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if tail[1] then
  last = tonumber(string.match(tail[1][1], '^(%d+)'))
end
local seq = last + 1
local token = rcall('GET', KEYS[4]) or '0'
rcall('XADD', KEYS[2], seq .. '-0', 'seq', seq, 'type', 'session.updated', 'run_id', 'session',
  'token', token, 'data', ARGV[5], 'ts', now)
rcall('HSET', KEYS[1], 'last_seq', seq)
return {OK, 1, now, seq, '', ''}
