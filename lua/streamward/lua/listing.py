"""``Streams`` calls for listing a project's sessions from its indexes (``GET /v1/sessions``).

Two orders, two index shapes (``Keys.project_index``):

- creation order pages by keyset ``(created_ms, session_id)`` over ``...:sessions:created``:
  a creation time never changes, so the live index is stable to page through;
- activity order moves under the lister's feet (an updated session jumps to the top), so
  its first page freezes the window in a snapshot (``snapshotSessions-2``) that later pages
  read by rank.

Nothing here scans: every read is a bounded range of one sorted set or a pipelined read of
the candidates' meta.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamward.lua.base import StreamsBase
from streamward.lua.base import as_text as _s
from streamward.lua.loader import ArgT, Script, script_sources
from streamward.lua.replies import as_int, as_list, ok_reply

Member = tuple[str, int]  # (session_id, score ms)
# meta fields the listing filters read for each candidate
FILTER_FIELDS = ("status", "type", "route_id", "metadata", "created_ms")


@dataclass(frozen=True, slots=True)
class Snapshot:
    total: int  # members in the window when the first page was read
    snapshot_id: str | None  # None: the head holds the whole window, nothing was stored
    head: list[Member]


def _members(flat: list[Any]) -> list[Member]:
    return [(_s(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


class SessionListing(StreamsBase):
    """Reads of the project session indexes for the listing."""

    _listing_scripts: dict[str, Script] | None = None

    def _script(self, name: str) -> Script:
        if self._listing_scripts is None:
            src = script_sources()
            self._listing_scripts = {
                n: Script(src[n], self.client) for n in ("snapshotSessions", "pruneSessions")
            }
        return self._listing_scripts[name]

    async def snapshot_activity(
        self, project: str, snapshot_id: str, min_ms: int | None, desc: bool, head: int, ttl_ms: int
    ) -> Snapshot:
        """The first ``head`` sessions by activity (from ``min_ms`` on, inclusive) and, when
        the window holds more, a snapshot of all of it under ``snapshot_id``."""
        pk = self.keys.project_index(project)
        lo = "-inf" if min_ms is None else str(min_ms)
        args: list[ArgT] = [lo, "desc" if desc else "asc", head, ttl_ms]
        raw = await self._script("snapshotSessions")([pk.updated, pk.snapshot(snapshot_id)], args)
        reply = ok_reply("snapshotSessions", as_list(raw))
        stored = as_int(reply[2]) == 1
        first = _members(list(reply[3:]))
        return Snapshot(as_int(reply[1]), snapshot_id if stored else None, first)

    async def read_snapshot(
        self, project: str, snapshot_id: str, offset: int, count: int, desc: bool, ttl_ms: int
    ) -> list[Member] | None:
        """``count`` members of a snapshot from rank ``offset`` (its TTL restarts); None when
        the snapshot expired."""
        key = self.keys.project_index(project).snapshot(snapshot_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.pexpire(key, ttl_ms)
        end = offset + count - 1
        if desc:
            pipe.zrevrange(key, offset, end, withscores=True)
        else:
            pipe.zrange(key, offset, end, withscores=True)
        alive, items = await pipe.execute()
        if not alive:
            return None
        return [(_s(m), int(float(sc))) for m, sc in items]

    async def read_created(
        self,
        project: str,
        after: tuple[int, str] | None,
        min_ms: int | None,
        desc: bool,
        count: int,
    ) -> tuple[list[Member], bool]:
        """Up to ``count`` sessions by creation strictly after the keyset ``after`` (in the
        listing's order), with ``created_ms >= min_ms``, and whether the index ended there.
        Ties on the score are ordered by session id like Redis orders them; a run of ties
        longer than ``count`` is stepped over by offset, never skipped."""
        key = self.keys.project_index(project).created
        lo: str = "-inf" if min_ms is None else str(min_ms)
        hi: str = "+inf"
        if after is not None:  # the range starts at the last score: its ties come first
            if desc:
                hi = str(after[0])
            else:
                lo = str(max(after[0], min_ms) if min_ms is not None else after[0])
        offset = 0
        while True:
            if desc:
                raw = await self.client.zrevrangebyscore(
                    key, hi, lo, start=offset, num=count, withscores=True
                )
            else:
                raw = await self.client.zrangebyscore(
                    key, lo, hi, start=offset, num=count, withscores=True
                )
            got = [(_s(m), int(float(sc))) for m, sc in raw]
            ended = len(got) < count
            if after is None:
                return got, ended
            keep = [(sid, sc) for sid, sc in got if _beyond(sc, sid, after, desc)]
            if keep or ended:
                return keep, ended
            offset += len(got)  # a whole batch of ties not past the cursor yet

    async def listing_meta(
        self, project: str, session_ids: list[str]
    ) -> list[dict[str, str] | None]:
        """The filter fields of each session's meta (None: the session's keys are gone)."""
        if not session_ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for sid in session_ids:
            pipe.hmget(self.keys.session(project, sid).meta, *FILTER_FIELDS)
        out: list[dict[str, str] | None] = []
        for values in await pipe.execute():
            if all(v is None for v in values):
                out.append(None)
            else:
                out.append({f: _s(v) for f, v in zip(FILTER_FIELDS, values, strict=True) if v})
        return out

    async def activity_scores(self, project: str, session_ids: list[str]) -> list[int | None]:
        """Each session's last activity ms in the project's activity index."""
        if not session_ids:
            return []
        raw = await self.client.zmscore(self.keys.project_index(project).updated, session_ids)
        return [None if v is None else int(float(v)) for v in raw]

    async def prune_gone(self, project: str, seen: list[Member]) -> int:
        """Drop sessions whose keys expired from the project's indexes, each only while its
        activity score is still the one read (score-checked, like ``prunePending-1``)."""
        if not seen:
            return 0
        pk = self.keys.project_index(project)
        args: list[ArgT] = []
        for sid, score in seen:
            args += [sid, score]
        raw = await self._script("pruneSessions")([pk.updated, pk.created], args)
        return as_int(ok_reply("pruneSessions", as_list(raw))[1])


def _beyond(score: int, sid: str, after: tuple[int, str], desc: bool) -> bool:
    """Whether ``(score, sid)`` comes after the keyset ``after`` in the listing's order."""
    if desc:
        return score < after[0] or (score == after[0] and sid < after[1])
    return score > after[0] or (score == after[0] and sid > after[1])
