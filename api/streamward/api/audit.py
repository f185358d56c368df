"""Ingest audit: one JSON line per ingest attempt and its outcome (the chaos checker's input).

Off unless ``STREAMWARD_INGEST_AUDIT_PATH`` is set. Several API processes may share one file:
each record is a single ``write`` on an ``O_APPEND`` descriptor, which the kernel appends
whole, and a record reaches the page cache before the response leaves, so a ``kill -9`` of
the API after answering loses nothing it answered. An API killed between Redis's answer and
the write loses that one record; the session log stays the truth for what was accepted.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson


class IngestAudit:
    """Appends ingest decisions to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pid = os.getpid()

    def record(
        self,
        *,
        session: str,
        run_id: str,
        token: int,
        replica_id: str | None,
        incarnation: str | None,
        first_seq: int,
        last_seq: int,
        outcome: str,
        accepted: int = 0,
        duplicates: int = 0,
        current_token: int | None = None,
    ) -> None:
        rec: dict[str, Any] = {
            "ts_ns": time.time_ns(),
            "api_pid": self._pid,
            "session": session,
            "run_id": run_id,
            "token": token,
            "replica_id": replica_id,
            "incarnation": incarnation,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "outcome": outcome,
            "accepted": accepted,
            "duplicates": duplicates,
        }
        if current_token is not None:
            rec["current_token"] = current_token
        os.write(self._fd, orjson.dumps(rec) + b"\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_audit(path: str) -> list[dict[str, Any]]:
    """Every record of an audit file (a torn last line from a killed writer is skipped)."""
    out: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for line in f:
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return out
