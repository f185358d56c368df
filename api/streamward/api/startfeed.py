"""Run starts straight from the owner: this process's start-notice channel (Redis pub/sub).

A detached invoke answers once its run started. The owner ships the run's ``run.started``
entry through an API's ingest (HTTP, coalesced with other runs' transcripts), so waiting for
that entry put a runner → API → Redis → API leg, and the ingest's queueing, on every
invoke's critical path. Instead, each API process listens on a channel of its own
(``Keys.starts_channel``) and names it in the inputs it waits for (the inbox entry's
``starts_to`` field); the owner that takes such an input, its take recorded under its
fencing token by ``peekInbox``, publishes a ``StartNotice`` there (``runner/started.py``),
and the waiting invoke answers from it. The transcript still travels through the ingest.

Pub/sub delivers at most once: a notice lost (the subscription down, Redis restarted) only
makes its invoke learn the start as before, from this process's ingest or the log tail
(``api/starts.py``). While not subscribed the process names no channel. Not on Cluster,
where every invoke follows the log (a keyless PUBLISH would have to reach every node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from streamward.api.starts import StartWaiters
from streamward.core.backoff import backoff_s
from streamward.core.tasks import cancel_until_done
from streamward.lua.keys import Keys
from streamward.lua.work import StartNotice

log = logging.getLogger("streamward.api.startfeed")
# how long stop() and a closing subscription wait: a shutdown never hangs on pub/sub
CLOSE_WAIT_S = 2.0


class StartFeed:
    """Subscribes to this process's start channel and hands each notice to ``starts``.
    ``start()`` / idempotent ``stop()``; ``starts.channel`` is set only while subscribed."""

    def __init__(self, client: Any, keys: Keys, starts: StartWaiters) -> None:
        self.client = client
        self.starts = starts
        self.channel = keys.starts_channel(uuid.uuid4().hex[:16])
        self.heard = 0  # notices received (tests, debugging)
        self.subscriptions = 0  # subscriptions Redis confirmed (a reconnect counts again)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="start feed")

    async def stop(self) -> None:
        self.starts.channel = ""
        task, self._task = self._task, None
        # repeated cancels (a cancel landing in a redis-py write can be lost: core/tasks.py),
        # bounded: a shutdown never hangs on the feed
        if task is not None and not await cancel_until_done(task, CLOSE_WAIT_S):
            log.warning("start feed: subscription not closed in %.0f s", CLOSE_WAIT_S)

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "subscribe":
                        # confirmed (a refused one raises instead, e.g. an ACL without the
                        # channel): only from now on do invokes ask for notices
                        self.starts.channel = self.channel
                        self.subscriptions += 1
                        failures = 0
                    elif kind == "message":
                        notice = StartNotice.parse(message["data"])
                        if notice is not None:
                            self.heard += 1
                            self.starts.announced(notice)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # lost, or refused: every invoke falls back to the log
                self.starts.channel = ""
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("start feed: not subscribed (%d in a row): %r", failures, exc)
                await asyncio.sleep(backoff_s(failures))
            finally:
                self.starts.channel = ""
                # (stop() cancels again while this runs: the close is then cut short, and
                # the client's own close, next at shutdown, drops the connection)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(pubsub.aclose(), CLOSE_WAIT_S)
