--[[
  ingestEntries-5.lua
  Fenced, idempotent append of one run's entries to the session log. Accepted
  only when the caller's token equals the session epoch (the newest owner);
  tokens start at 1, so a session never acquired (epoch 0) accepts nobody.
  Each entry carries the session-wide seq; its stream id is "<seq>-0", so a
  replayed entry (seq already stored) is counted as a duplicate, never written
  twice. A gap in seq refuses the whole batch; nothing is written.
  With an owner signature, the lease must also name that owner: tokens repeat
  when a Redis failover loses an acquisition together with its epoch INCR
  (asynchronous replication), and then two holders share one token number;
  the lease tells them apart. An HTTP-only runner may omit it (token fencing).

  KEYS[1] epoch key              sw:{S}:epoch
  KEYS[2] log key                sw:{S}:log
  KEYS[3] meta key               sw:{S}:meta
  KEYS[4] runs key               sw:{S}:runs   run_id -> JSON run state
  KEYS[5] lease key              sw:{S}:lease

  ARGV[1] token                  caller's fencing token
  ARGV[2] run_id
  ARGV[3] n                      number of entries
  ARGV[4] owner                  "replica|incarnation|token" the lease must hold, or "" (no check)
  ARGV[5..] per entry: seq, type, data (JSON text), ts_ms ("" = Redis TIME)

  Returns {1, accepted, duplicates, last_seq}
          {-3, epoch}                           STALE_TOKEN: a newer owner exists (or token unknown)
          {-2}                                  NOT_OWNER: the lease does not name the given owner
          {-5, last_seq, seq}                   SEQ_GAP: seq would skip last_seq + 1
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local epoch = tonumber(rcall('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token == nil or token < 1 or token ~= epoch then
  return {STALE_TOKEN, epoch}
end
if ARGV[4] ~= '' and rcall('HGET', KEYS[5], 'owner') ~= ARGV[4] then
  return {NOT_OWNER}
end
local now = redis_now_ms()

local last = 0
local tail = rcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if tail[1] then
  last = tonumber(string.match(tail[1][1], '^(%d+)'))
end

local n = tonumber(ARGV[3])
-- validate the whole batch first so a gap writes nothing
local expect = last
for i = 0, n - 1 do
  local seq = tonumber(ARGV[5 + i * 4])
  if seq > expect + 1 then
    return {SEQ_GAP, last, seq}
  end
  if seq == expect + 1 then
    expect = seq
  end
end

local run_id = ARGV[2]
-- keep in step with TERMINAL_TYPES (lua/streams.py): run.merged ends an input another run absorbed
local terminal = {['run.completed'] = 1, ['run.failed'] = 1, ['run.cancelled'] = 1, ['run.merged'] = 1}
local accepted, dups = 0, 0
for i = 0, n - 1 do
  local b = 5 + i * 4
  local seq = tonumber(ARGV[b])
  if seq <= last then
    dups = dups + 1
  else
    local etype, data, ts = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    if ts == '' then ts = tostring(now) end
    local id = rcall('XADD', KEYS[2], seq .. '-0', 'seq', seq, 'type', etype, 'run_id', run_id,
      'token', token, 'data', data, 'ts', ts)
    last = seq
    accepted = accepted + 1
    if string.sub(etype, 1, 4) == 'run.' and etype ~= 'run.output' then
      local state = {}
      local raw = rcall('HGET', KEYS[4], run_id)
      if raw then state = cjson.decode(raw) end
      state['status'] = string.sub(etype, 5)
      state['token'] = token
      state['updated_ms'] = now
      state['last_id'] = id
      if etype == 'run.started' then
        state['started_id'] = id
        local ok, d = pcall(cjson.decode, data)
        if ok and type(d) == 'table' then
          state['replica_id'] = d['replica_id']
          state['attempt'] = d['attempt']
        end
        rcall('HSET', KEYS[3], 'active_run_id', run_id)
      elseif terminal[etype] or etype == 'run.interrupted' then
        if rcall('HGET', KEYS[3], 'active_run_id') == run_id then
          rcall('HDEL', KEYS[3], 'active_run_id')
        end
      end
      rcall('HSET', KEYS[4], run_id, cjson.encode(state))
    end
  end
end
rcall('HSET', KEYS[3], 'last_seq', last, 'updated_ms', now)
return {OK, accepted, dups, last}
