--[[
  renewLeases-n.lua
  Renew many session leases of one replica in one call (variadic: 1..n keys,
  which on Redis Cluster the caller groups by slot). Cost is one round trip per
  chunk, not per lease.

  KEYS[1..n] lease keys          sw:{S}:lease, one per session

  ARGV[1] replica_id
  ARGV[2] incarnation
  ARGV[3] ttl_ms                 session lease hard TTL
  ARGV[4..3+n] token             the token the caller holds for KEYS[i]

  Returns {now_ms, r1, ..., rn}  ri = 1 renewed, 0 gone (expired or released),
                                 -2 held by another owner, -3 our token is stale
]]
local rcall = redis.call
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
for i = 1, #KEYS do
  local h = rcall('HMGET', KEYS[i], 'replica', 'incarnation', 'token')
  if not h[1] then
    out[i + 1] = 0
  elseif h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then
    out[i + 1] = -2
  elseif h[3] ~= ARGV[3 + i] then
    out[i + 1] = -3
  else
    rcall('HSET', KEYS[i], 'renewed_ms', now)
    rcall('PEXPIRE', KEYS[i], ARGV[3])
    out[i + 1] = 1
  end
end
return out
