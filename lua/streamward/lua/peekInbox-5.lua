--[[
  peekInbox-5.lua
  What a session's owner needs to pick its next input, in one round trip: the
  ids, run ids and multitask modes of the oldest pending inputs (the lookahead
  for interrupting inputs), the first one in full (only when asked), its run
  state (a previous owner may have ended it already) and whether its
  cancellation was requested.

  With a token (the owner about to run the head), it also records, fenced, which
  owners took the head input: meta head_taken = "<entry id>|<token>|<owners>",
  counting each new token once. An input that took down every owner it met is
  seen here even when no run.started of it ever reached the log (the owner died
  before shipping it): poison detection needs this count in Redis.

  Only the head input travels in full: inputs may be large (up to the API's
  input cap each), and an owner that read and parsed a whole window of them on
  every look stalled its event loop. The window is read in small chunks, so the
  script never holds more than a few inputs at once.

  KEYS[1] inbox key              sw:{S}:inbox
  KEYS[2] runs key               sw:{S}:runs
  KEYS[3] cancels key            sw:{S}:cancels
  KEYS[4] meta key               sw:{S}:meta
  KEYS[5] epoch key              sw:{S}:epoch

  ARGV[1] count                  inputs to look at, at most
  ARGV[2] with_head              1: return the first input's fields in full; 0: not
  ARGV[3] token                  the owner's fencing token; 0: record nothing
  ARGV[4] announce               "1": the owner runs a runnable head at once, so the head's
                                 start notice is published here (includes/peekInbox.lua);
                                 absent or "0": not
  ARGV[5] poison_after           POISON_AFTER_OWNERS (0: never), for the runnable rule
  ARGV[6] session ref            <project>/<session_id>, named in the notice
  ARGV[7] replica id             the owner's, named in the notice

  Returns {1, metas, head, state, cancel, owners, announced}
                                                metas: flat {id, run_id, multitask, ...}
                                                for up to count inputs, oldest first (empty
                                                when the inbox is); head: the first input's
                                                field/value list as XRANGE returns it ({}
                                                when empty or not asked); state: the first
                                                input's run state JSON ("" when none);
                                                cancel: 1 when its cancellation was requested;
                                                owners: owners that took the head so far,
                                                this one included (0: nothing recorded);
                                                announced: 1 when the head's start notice
                                                was published (PUBLISH on its starts_to)
]]
--- @include "includes/statusCodes"
--- @include "includes/peekInbox"
local notice = nil
if ARGV[4] == '1' then
  notice = {ref = ARGV[6], replica = ARGV[7], poison_after = tonumber(ARGV[5]) or 0}
end
return peek_inbox(tonumber(ARGV[1]), ARGV[2], ARGV[3], notice)
