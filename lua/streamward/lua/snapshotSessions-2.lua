--[[
  snapshotSessions-2.lua
  The first page of a listing in activity order: the head of the project's activity
  index from a lower bound on, and, when more than the head is there, a frozen copy of
  the whole window (ZRANGESTORE, with a TTL) that later pages read by rank. Head and copy
  come from the same instant, so page 2 starts exactly where the head ended, whatever
  sessions move meanwhile.

  KEYS[1] activity index         sw:project:{<project>}:sessions:updated
  KEYS[2] snapshot               sw:project:{<project>}:list:<id>

  ARGV[1] min score              inclusive ("-inf" or ms)
  ARGV[2] order                  "desc" | "asc"
  ARGV[3] head                   how many members to return
  ARGV[4] ttl_ms                 of the snapshot

  Returns {1, total, stored, member1, score1, member2, score2, ...}
          total: members in the window; stored: 1 when the snapshot was written (total >= head)
]]
--- @include "includes/statusCodes"
local rcall = redis.call
local n = tonumber(ARGV[3])
local total = rcall('ZCOUNT', KEYS[1], ARGV[1], '+inf')
local head
if ARGV[2] == 'desc' then
  head = rcall('ZRANGE', KEYS[1], '+inf', ARGV[1], 'BYSCORE', 'REV', 'LIMIT', 0, n, 'WITHSCORES')
else
  head = rcall('ZRANGE', KEYS[1], ARGV[1], '+inf', 'BYSCORE', 'LIMIT', 0, n, 'WITHSCORES')
end
local stored = 0
if total >= n then -- n = page size + 1: a next page exists to snapshot for
  rcall('ZRANGESTORE', KEYS[2], KEYS[1], ARGV[1], '+inf', 'BYSCORE')
  rcall('PEXPIRE', KEYS[2], ARGV[4])
  stored = 1
end
local out = {OK, total, stored}
for i = 1, #head do
  out[#out + 1] = head[i]
end
return out
