--[[
  acquireLease-4.lua
  Acquire a session lease. A free lease is taken with a token minted from the
  session's epoch (INCR: the fencing token). When the same replica and
  incarnation already hold it the call is idempotent and extends it.

  KEYS[1] lease key              sw:{S}:lease
  KEYS[2] epoch key              sw:{S}:epoch
  KEYS[3] meta key               sw:{S}:meta
  KEYS[4] history key           sw:{S}:history

  ARGV[1] replica_id
  ARGV[2] incarnation
  ARGV[3] ttl_ms                 session lease hard TTL

  Returns {1, token, acquired_ms, fresh}        fresh = 1 when newly acquired, 0 when already ours
          {-1, replica, incarnation, token, pttl_ms}   HELD by another owner
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
--- @include "includes/history"
local rcall = redis.call
local now = redis_now_ms()
local h = rcall('HMGET', KEYS[1], 'replica', 'incarnation', 'token', 'acquired_ms')
if h[1] then
  if h[1] == ARGV[1] and h[2] == ARGV[2] then
    rcall('HSET', KEYS[1], 'renewed_ms', now, 'ttl_ms', ARGV[3])
    rcall('PEXPIRE', KEYS[1], ARGV[3])
    return {OK, tonumber(h[3]), tonumber(h[4]), 0}
  end
  return {HELD, h[1], h[2], tonumber(h[3]), rcall('PTTL', KEYS[1])}
end
local token = rcall('INCR', KEYS[2])
rcall('HSET', KEYS[1], 'replica', ARGV[1], 'incarnation', ARGV[2], 'token', token,
  'acquired_ms', now, 'renewed_ms', now, 'ttl_ms', ARGV[3],
  'owner', ARGV[1] .. '|' .. ARGV[2] .. '|' .. token)
rcall('PEXPIRE', KEYS[1], ARGV[3])
rcall('HINCRBY', KEYS[3], 'transitions', 1)
rcall('HSET', KEYS[3], 'owner_changed_ms', now)
rcall('XADD', KEYS[4], 'MAXLEN', '~', HISTORY_MAXLEN, '*',
  unpack(history('acquired', ARGV[1], ARGV[2], token, '', now)))
return {OK, token, now, 1}
