"""One worker process of a peer job queue for ``streamward bench invoke`` (see bench/peers.py).

``python -m streamward.tools.bench.peer_worker SYSTEM REDIS_URL SLOTS`` runs a saq, arq or
Celery worker whose one job, ``handshake(hid)``, does ``LPUSH started:<hid>`` as its first
act: the "tell me it started" a caller waits for in ``BLPOP``. When the worker is about to
take jobs it ``INCR``s ``peerbench:ready``, which is how the bench knows both are up.

Only the peer library of SYSTEM is imported, so a missing one affects only its own peer.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import redis
import redis.asyncio as aioredis

READY_KEY = "peerbench:ready"
SYSTEMS = ("saq", "arq", "arq-tuned", "celery")
ARQ_TUNED_POLL_DELAY_S = 0.01


def started_key(hid: str) -> str:
    return f"started:{hid}"


def run_saq(url: str, slots: int) -> None:
    from saq import Queue, Worker

    r = aioredis.Redis.from_url(url)

    async def handshake(ctx: Any, *, hid: str) -> None:
        await r.lpush(started_key(hid), 1)

    async def startup(ctx: Any) -> None:
        await r.incr(READY_KEY)

    handshake.__qualname__ = "handshake"  # saq registers a job by its qualified name
    queue = Queue.from_url(url)
    worker = Worker(queue, functions=[handshake], concurrency=slots, startup=startup)
    asyncio.run(worker.start())


def run_arq(url: str, slots: int, poll_delay_s: float | None) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker

    async def handshake(ctx: dict[str, Any], hid: str) -> None:
        await ctx["redis"].lpush(started_key(hid), 1)

    async def startup(ctx: dict[str, Any]) -> None:
        await ctx["redis"].incr(READY_KEY)

    handshake.__qualname__ = "handshake"  # arq registers a job by its qualified name
    extra: dict[str, Any] = {} if poll_delay_s is None else {"poll_delay": poll_delay_s}
    # arq's Worker.run needs a current event loop (it calls get_event_loop)
    asyncio.set_event_loop(asyncio.new_event_loop())
    Worker(
        functions=[handshake],
        redis_settings=RedisSettings.from_dsn(url),
        max_jobs=slots,
        on_startup=startup,
        **extra,
    ).run()


def run_celery(url: str, slots: int) -> None:
    from celery import Celery
    from celery.signals import worker_ready

    r = redis.Redis.from_url(url)  # thread-safe: a connection per thread from its pool
    app = Celery("peerbench", broker=url)
    app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)

    def handshake(hid: str) -> None:
        r.lpush(started_key(hid), 1)

    def ready(**_: Any) -> None:
        r.incr(READY_KEY)

    # registered by call, not as decorators: Celery is untyped, and mypy --strict rejects an
    # untyped decorator
    app.task(name="handshake")(handshake)
    worker_ready.connect(ready, weak=False)

    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={slots}",
            "--loglevel=WARNING",
            # no worker-to-worker chatter: it is not part of the handshake
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in SYSTEMS:
        print(f"usage: peer_worker {{{','.join(SYSTEMS)}}} REDIS_URL SLOTS", file=sys.stderr)
        return 2
    system, url, slots = argv[0], argv[1], int(argv[2])
    if system == "saq":
        run_saq(url, slots)
    elif system == "arq":
        run_arq(url, slots, None)
    elif system == "arq-tuned":
        run_arq(url, slots, ARQ_TUNED_POLL_DELAY_S)
    else:
        run_celery(url, slots)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
