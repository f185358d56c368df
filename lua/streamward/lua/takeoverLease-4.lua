--[[
  takeoverLease-4.lua
  Take over a session lease whose holder's replica lease is dead. Compare-and-set:
  succeeds only if the lease still names the expected (replica, incarnation,
  token), or is already gone. Mints a new token, fencing the old owner.

  KEYS[1] lease key              sw:{S}:lease
  KEYS[2] epoch key              sw:{S}:epoch
  KEYS[3] meta key               sw:{S}:meta
  KEYS[4] history key           sw:{S}:history

  ARGV[1] expected replica_id
  ARGV[2] expected incarnation
  ARGV[3] expected token
  ARGV[4] new replica_id
  ARGV[5] new incarnation
  ARGV[6] ttl_ms                 session lease hard TTL

  Returns {1, token, acquired_ms, fresh}        taken over (fresh = 0 when it was already ours)
          {-1, replica, incarnation, token, pttl_ms}   HELD by someone other than expected
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
--- @include "includes/history"
local rcall = redis.call
local now = redis_now_ms()
local h = rcall('HMGET', KEYS[1], 'replica', 'incarnation', 'token', 'acquired_ms')
if h[1] then
  if h[1] == ARGV[4] and h[2] == ARGV[5] then
    rcall('HSET', KEYS[1], 'renewed_ms', now, 'ttl_ms', ARGV[6])
    rcall('PEXPIRE', KEYS[1], ARGV[6])
    return {OK, tonumber(h[3]), tonumber(h[4]), 0}
  end
  if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or h[3] ~= ARGV[3] then
    return {HELD, h[1], h[2], tonumber(h[3]), rcall('PTTL', KEYS[1])}
  end
end
local token = rcall('INCR', KEYS[2])
rcall('DEL', KEYS[1])
rcall('HSET', KEYS[1], 'replica', ARGV[4], 'incarnation', ARGV[5], 'token', token,
  'acquired_ms', now, 'renewed_ms', now, 'ttl_ms', ARGV[6],
  'owner', ARGV[4] .. '|' .. ARGV[5] .. '|' .. token)
rcall('PEXPIRE', KEYS[1], ARGV[6])
rcall('HINCRBY', KEYS[3], 'transitions', 1)
rcall('HINCRBY', KEYS[3], 'takeovers', 1)
rcall('HSET', KEYS[3], 'owner_changed_ms', now)
rcall('XADD', KEYS[4], 'MAXLEN', '~', HISTORY_MAXLEN, '*', unpack(history('taken_over', ARGV[4], ARGV[5], token,
  'from ' .. ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], now)))
return {OK, token, now, 1}
