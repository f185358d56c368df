"""JSON work of unbounded size kept off the event loop.

One event loop serves every session of a replica, and its replica heartbeat's progress
tick: parsing or serialising a large document on it stalls all of them. Inputs are parsed
one at a time (only the head of an inbox, see ``peekInbox-5``), and anything that may be
large goes to a worker thread; small documents stay on the loop, where a thread hop would
cost more than the work.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from streamward.lua.inbox import InboxItem, RawInboxEntry

LARGE_JSON_BYTES = 64 * 1024  # parsed / serialised in a worker thread above this
_ESTIMATE_NODES = 256  # a document with more nodes than this counts as large


async def parse_input(raw: RawInboxEntry) -> InboxItem:
    """The inbox entry with its input parsed: in a worker thread when it is large."""
    if raw.input_bytes > LARGE_JSON_BYTES:
        return await asyncio.to_thread(raw.parse)
    return raw.parse()


def maybe_large(data: Any, limit_bytes: int = LARGE_JSON_BYTES) -> bool:
    """Whether ``data`` may serialise above ``limit_bytes``: a bounded walk that counts
    string lengths and gives up (True) after ``_ESTIMATE_NODES`` nodes."""
    size, nodes = 0, 0
    stack = [data]
    while stack:
        x = stack.pop()
        nodes += 1
        if isinstance(x, str | bytes):
            size += len(x) + 2
        elif isinstance(x, dict):
            if len(x) > _ESTIMATE_NODES:
                return True
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list | tuple):
            if len(x) > _ESTIMATE_NODES:
                return True
            stack.extend(x)
        else:
            size += 24  # numbers, bools, null; an orjson.Fragment is copied as it is
        if size > limit_bytes or nodes > _ESTIMATE_NODES:
            return True
    return False


async def dumps(data: Any) -> bytes:
    """``orjson.dumps(data)``: in a worker thread when ``data`` may be large."""
    if maybe_large(data):
        return await asyncio.to_thread(orjson.dumps, data)
    return orjson.dumps(data)
