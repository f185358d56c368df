--[[
  saveState-3.lua
  Fenced, atomic write of a session host's state snapshot (``ctx.save_state``).
  Accepted only when the caller's token equals the session epoch (tokens start at
  1, so a never-acquired session accepts nobody) AND the lease names the writer,
  as ingestEntries-5 checks it: a stale owner (taken over, fenced, force-released)
  is refused here, in Redis, whatever it believes. One round trip.

  KEYS[1] epoch key              sw:{S}:epoch
  KEYS[2] state key              sw:{S}:state  hash: data, token, replica_id, saved_ms, bytes
  KEYS[3] lease key              sw:{S}:lease

  ARGV[1] token                  caller's fencing token
  ARGV[2] owner                  "replica|incarnation|token" the lease must hold
  ARGV[3] data                   the snapshot, JSON text (size checked by the caller)

  Returns {1, saved_ms}                         stored
          {-3, epoch}                           STALE_TOKEN: a newer owner exists (or token unknown)
          {-2}                                  NOT_OWNER: the lease does not name the writer
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local epoch = tonumber(rcall('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token == nil or token < 1 or token ~= epoch then
  return {STALE_TOKEN, epoch}
end
if rcall('HGET', KEYS[3], 'owner') ~= ARGV[2] then
  return {NOT_OWNER}
end
local now = redis_now_ms()
-- who saved it: the replica part of the owner signature
local replica_id = string.match(ARGV[2], '^([^|]*)')
rcall('HSET', KEYS[2], 'data', ARGV[3], 'token', token, 'replica_id', replica_id,
  'saved_ms', now, 'bytes', string.len(ARGV[3]))
return {OK, now}
