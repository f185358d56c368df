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
--- @include "includes/ingestEntries"
return ingest_entries(1, 2, 3, 4, 5, 5)
