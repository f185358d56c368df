--[[
  enqueueInput-5.lua
  Append an invocation to the session inbox, atomically with its idempotency
  key and the multitask "reject" check. Creates the session's meta on first use.
  Also answers what the caller needs next, so an invoke costs one round trip
  here: where the log ended before the append (a tail from there sees the run's
  first entry) and who holds the lease (read after the append: the ordering the
  no-input-lost argument needs; its replica lease lives in another slot and is
  checked by the caller).

  KEYS[1] inbox key              sw:{S}:inbox
  KEYS[2] meta key               sw:{S}:meta
  KEYS[3] idempotency key        sw:{S}:idem:<key>  (passed even when unused)
  KEYS[4] log key                sw:{S}:log
  KEYS[5] lease key              sw:{S}:lease

  ARGV[1] run_id                 minted by the caller
  ARGV[2] input                  JSON text
  ARGV[3] multitask              enqueue | reject | interrupt
  ARGV[4] use_idempotency        "1" or "0"
  ARGV[5] idempotency_ttl_ms
  ARGV[6] project
  ARGV[7] session_id
  ARGV[8] source                 who sent it (invoke, event:<route>)
  ARGV[9] session type named     by the invoke or its route ("" = none named)
  ARGV[10] default session type  used when a new session names none
  ARGV[11] max pending inputs     0 = no limit; at it, nothing is written (INBOX_FULL)
  ARGV[12] may create             "1", or "0": the project is at its live-sessions limit,
                                  so creating (or reviving) the session is refused
  ARGV[13] traceparent            W3C trace context the run continues ("" or absent = none:
                                  the entry then has no `trace` field, as before tracing)
  ARGV[14] starts_to              the pub/sub channel of the API process waiting for this
                                  run's start ("" or absent = none: no `starts_to` field);
                                  the owner publishes there when it takes the input

  The session type (meta `type`) is set once, when the script creates the session (or
  revives a retired one); a later input naming another type is refused before anything
  is written. A session created before types existed has type "default".

  A session retired by deletion or expiry (meta delete_after_ms set) is revived:
  its inbox and meta lose their expiry and revived = 1 tells the caller to keep
  the session's other keys too.

  The quota checks (ARGV[11], ARGV[12]) come before any write: a refused input leaves the
  inbox, the idempotency key and the meta as they were. An idempotent retry of an input
  already appended is answered DUPLICATE even when the inbox is full now.

  Returns {1, entry_id, active_run_id, pending, revived, log_last_id, replica, incarnation,
           type, created}                       queued ("" when no active run; log_last_id
                                                "0-0" for an empty log; replica and
                                                incarnation "" when no lease is held;
                                                type: the session's type; created = 1 when
                                                this append created the session's meta)
          {2, run_id, log_last_id}                  DUPLICATE: the idempotency key names run_id
          {-6, active_run_id, pending}              BUSY: multitask=reject and a run is active
          {-8, session_type, named_type}            TYPE_MISMATCH: nothing appended
          {-9, pending, max_pending}                INBOX_FULL: nothing written
          {-10, session_id}                         SESSION_LIMIT: new or retired, and the
                                                    project may create none: nothing written
]]
--- @include "includes/statusCodes"
--- @include "includes/redisTime"
local rcall = redis.call
local function log_last()
  local tail = rcall('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
  if tail[1] then
    return tail[1][1]
  end
  return '0-0'
end
if ARGV[4] == '1' then
  local existing = rcall('GET', KEYS[3])
  if existing then
    return {DUPLICATE, existing, log_last()}
  end
end
local info = rcall('HMGET', KEYS[2], 'type', 'created_ms', 'delete_after_ms')
local stype = info[1]
if (not info[2] or info[3]) and ARGV[12] == '0' then
  return {SESSION_LIMIT, ARGV[7]}
end
if not info[2] or info[3] then
  stype = false -- new or retired: this input names its type
elseif not stype then
  stype = 'default' -- created before session types: what sw:work served then
end
if stype and ARGV[9] ~= '' and ARGV[9] ~= stype then
  return {TYPE_MISMATCH, stype, ARGV[9]}
end
if not stype then
  stype = ARGV[9] ~= '' and ARGV[9] or ARGV[10]
end
local active = rcall('HGET', KEYS[2], 'active_run_id') or ''
local pending = rcall('XLEN', KEYS[1])
if ARGV[3] == 'reject' and (active ~= '' or pending > 0) then
  return {BUSY, active, pending}
end
local max_pending = tonumber(ARGV[11]) or 0
if max_pending > 0 and pending >= max_pending then
  return {INBOX_FULL, pending, max_pending}
end
local now = redis_now_ms()
local id
local trace, starts_to = ARGV[13] or '', ARGV[14] or ''
if trace == '' and starts_to == '' then
  id = rcall('XADD', KEYS[1], '*', 'run_id', ARGV[1], 'input', ARGV[2],
    'multitask', ARGV[3], 'source', ARGV[8], 'enqueued_ms', now)
else -- the run's trace context (docs/operations.md, "Tracing"), the waiting API's channel
  local fields = {'run_id', ARGV[1], 'input', ARGV[2], 'multitask', ARGV[3], 'source', ARGV[8],
    'enqueued_ms', now}
  if trace ~= '' then
    fields[#fields + 1] = 'trace'
    fields[#fields + 1] = trace
  end
  if starts_to ~= '' then
    fields[#fields + 1] = 'starts_to'
    fields[#fields + 1] = starts_to
  end
  id = rcall('XADD', KEYS[1], '*', unpack(fields))
end
if ARGV[4] == '1' then
  rcall('SET', KEYS[3], ARGV[1], 'PX', ARGV[5])
end
local created = 0
if rcall('HSETNX', KEYS[2], 'created_ms', now) == 1 then
  created = 1
  rcall('HSET', KEYS[2], 'project', ARGV[6], 'session_id', ARGV[7])
end
local revived = 0
if rcall('HEXISTS', KEYS[2], 'delete_after_ms') == 1 then
  revived = 1
  rcall('HDEL', KEYS[2], 'delete_after_ms', 'reason', 'ended_ms')
  rcall('PERSIST', KEYS[2])
  rcall('PERSIST', KEYS[1])
end
rcall('HSET', KEYS[2], 'status', 'active', 'updated_ms', now, 'type', stype)
local holder = rcall('HMGET', KEYS[5], 'replica', 'incarnation')
return {OK, id, active, pending + 1, revived, log_last(), holder[1] or '', holder[2] or '', stype,
  created}
