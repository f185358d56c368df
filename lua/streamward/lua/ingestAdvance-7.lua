--[[
  ingestAdvance-7.lua
  ingestEntries then advanceInbox in one call: the owner's post of a run's last entries
  (its terminal one among them) also consumes that run's input and peeks the next one.
  The input is consumed only after the append succeeded, so no input is ever consumed
  without its terminal entry stored (the order an owner's death relies on), and the next
  input's start notice leaves Redis the moment the transcript is stored. Sent by the API's
  ingest when the runner's post names the input (docs/api.md, "The inbox advanced by the
  ingest"). A retried post (its answer lost) is safe: its entries are duplicates, the
  XDEL of a consumed entry does nothing (and then no start notice is published again),
  and the peek records the same take again.

  KEYS[1] inbox key              sw:{S}:inbox
  KEYS[2] runs key               sw:{S}:runs
  KEYS[3] cancels key            sw:{S}:cancels
  KEYS[4] meta key               sw:{S}:meta
  KEYS[5] epoch key              sw:{S}:epoch
  KEYS[6] log key                sw:{S}:log
  KEYS[7] lease key              sw:{S}:lease

  ARGV[1] token                  as ingestEntries-5's ARGV[1..4]
  ARGV[2] run_id
  ARGV[3] n                      number of entries
  ARGV[4] owner                  "replica|incarnation|token" the lease must hold, or ""
  ARGV[5] entry_id               inbox entry consumed after the append (the run's input)
  ARGV[6] count                  as advanceInbox-5's ARGV[3..7]
  ARGV[7] announce
  ARGV[8] poison_after
  ARGV[9] session ref
  ARGV[10] replica id
  ARGV[11..] per entry: seq, type, data (JSON text), ts_ms ("" = Redis TIME)

  Returns {1, accepted, duplicates, last_seq, metas, head, state, cancel, owners, announced}
                                        ingestEntries-5's reply, then advanceInbox-5's
          {-3, epoch}                   STALE_TOKEN: nothing written (as ingestEntries-5)
          {-2}                          NOT_OWNER: nothing written
          {-5, last_seq, seq}           SEQ_GAP: nothing written
]]
--- @include "includes/statusCodes"
--- @include "includes/ingestEntries"
--- @include "includes/peekInbox"
local r = ingest_entries(5, 6, 4, 2, 7, 11)
if r[1] ~= OK then
  return r
end
-- 0: consumed already (a retried or late copy of this post): the peek is answered again,
-- but no notice is published on a decision that may be stale, and the cursor stays
local consumed = redis.call('XDEL', KEYS[1], ARGV[5])
if consumed == 1 then
  redis.call('HSET', KEYS[4], 'inbox_cursor', ARGV[5])
end
local notice = nil
if consumed == 1 and ARGV[7] == '1' then
  notice = {ref = ARGV[9], replica = ARGV[10], poison_after = tonumber(ARGV[8]) or 0}
end
local p = peek_inbox(tonumber(ARGV[6]), '1', ARGV[1], notice)
return {OK, r[2], r[3], r[4], p[2], p[3], p[4], p[5], p[6], p[7]}
