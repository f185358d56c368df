"""Loads ``lua/*.lua`` once (inlining ``--- @include "includes/<name>"`` lines); calls them by
EVALSHA with NOSCRIPT fallback (redis-py Script). The typed calls live in lua/scripts.py."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from streamward.lua import autopipe
from streamward.lua.client import RedisClient
from streamward.lua.errors import ScriptError

NAME_PATTERN = re.compile(r"(?P<op>[a-z][A-Za-z]+)-(?P<keys>\d+|n)\.lua")
# BullMQ's include syntax: the whole line is replaced by includes/<name>.lua (once per script)
INCLUDE_PATTERN = re.compile(r'^--- @include "(?P<path>includes/[A-Za-z]+)"[ \t]*$', re.M)
KeyT = str
ArgT = str | int | float | bytes

# Set by the process (the API's or runner's metrics) to time every script call:
# ``on_script_timing(script_name, seconds, ok)``. A plain callable so lua/ stays free of
# any metrics library; None (the default) costs one attribute read per call.
ScriptTimingHook = Callable[[str, float, bool], None]
on_script_timing: ScriptTimingHook | None = None


@dataclass(frozen=True)
class ScriptSource:
    """One script file: its operation name, declared key count (None = variadic) and text.

    ``source`` is what Redis runs (includes inlined; its SHA1 is the EVALSHA digest),
    ``raw`` the file as written.
    """

    name: str
    num_keys: int | None
    source: str
    raw: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}-{'n' if self.num_keys is None else self.num_keys}.lua"


def inline_includes(text: str, read: Callable[[str], str], seen: set[str] | None = None) -> str:
    """``text`` with every include line replaced by the included file (itself inlined).

    ``read("includes/x")`` returns that file's text. A file already inlined into this script
    is dropped on a second include: each snippet defines locals once.
    """
    done = set() if seen is None else seen

    def one(m: re.Match[str]) -> str:
        path = m.group("path")
        if path in done:
            return ""
        done.add(path)
        return inline_includes(read(path), read, done).rstrip("\n")

    return INCLUDE_PATTERN.sub(one, text)


def read_include(path: str) -> str:
    entry = resources.files("streamward.lua").joinpath(f"{path}.lua")
    if not entry.is_file():
        raise ScriptError(f"no Lua include {path}.lua")
    return entry.read_text(encoding="utf-8")


@cache
def script_sources() -> dict[str, ScriptSource]:
    """Every script shipped in the ``lua`` package, by operation name, includes inlined."""
    out: dict[str, ScriptSource] = {}
    for entry in resources.files("streamward.lua").iterdir():
        m = NAME_PATTERN.fullmatch(entry.name)
        if m is None:
            continue
        keys = m.group("keys")
        raw = entry.read_text(encoding="utf-8")
        out[m.group("op")] = ScriptSource(
            name=m.group("op"),
            num_keys=None if keys == "n" else int(keys),
            source=inline_includes(raw, read_include),
            raw=raw,
        )
    return out


class Script:
    """A loaded script bound to nothing: pass the client (or pipeline) on each call."""

    def __init__(self, src: ScriptSource, client: RedisClient) -> None:
        self.src = src
        self._client = client
        # redis-py's Script: SHA computed locally, EVALSHA first, SCRIPT LOAD on NOSCRIPT.
        self._script: AsyncScript = client.register_script(src.source)

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    def _check(self, keys: Sequence[KeyT]) -> None:
        n = self.src.num_keys
        if (n is None and not keys) or (n is not None and len(keys) != n):
            want = "at least 1" if n is None else str(n)
            raise ScriptError(f"{self.src.filename} takes {want} keys, called with {len(keys)}")

    async def __call__(
        self, keys: Sequence[KeyT], args: Sequence[ArgT], client: RedisClient | None = None
    ) -> Any:
        self._check(keys)
        hook = on_script_timing
        if client is None and (ap := autopipe.for_client(self._client)) is not None:
            # this loop turn's calls leave together (lua/autopipe.py)
            fut = ap.submit(lambda pipe: self._queued(pipe, keys, args))
            reply = (await autopipe.timed(self.src.name, hook, fut))[0]
            if isinstance(reply, Exception):
                raise reply
            return reply
        if hook is None:
            return await self._script(keys=list(keys), args=list(args), client=client)
        t0 = time.perf_counter()
        ok = False
        try:
            reply = await self._script(keys=list(keys), args=list(args), client=client)
            ok = True
            return reply
        finally:
            hook(self.src.name, time.perf_counter() - t0, ok)

    def queue(self, pipe: Pipeline, keys: Sequence[KeyT], args: Sequence[ArgT]) -> None:
        """Queue the call on a pipeline (its reply comes back from ``pipe.execute()``)."""
        self._check(keys)
        # not added to pipe.scripts: that costs a SCRIPT EXISTS round trip per execute;
        # callers run ``execute_pipeline`` below, which loads the script on NOSCRIPT
        pipe.evalsha(self._script.sha, len(keys), *keys, *args)

    def _queued(self, pipe: Any, keys: Sequence[KeyT], args: Sequence[ArgT]) -> tuple[Script]:
        self.queue(pipe, keys, args)
        return (self,)

    async def load(self, client: RedisClient) -> None:
        await client.script_load(self.src.source)


async def execute_pipeline(
    client: RedisClient,
    script: Script | Sequence[Script],
    build: Callable[[Any], None],
    *,
    alone: bool = False,
) -> list[Any]:
    """Build and run a pipeline of ``script`` calls (several scripts: the first names the
    timing); on NOSCRIPT load them and run again.

    The round trip is reported to ``on_script_timing`` under the script's name, as a direct
    call is: a script moved into a pipeline keeps its latency metric.

    ``alone``: a large pipeline (a batch renewal, a batch ingest) is sent on its own rather
    than in the loop turn's auto-pipeline, where every other call would wait for its replies."""
    scripts = [script] if isinstance(script, Script) else list(script)
    hook = on_script_timing
    if not alone and (ap := autopipe.for_client(client)) is not None:

        def unit(pipe: Any) -> Sequence[Script]:
            build(pipe)
            return scripts

        # one unit of this turn's batch, sent again on NOSCRIPT (lua/autopipe.py)
        replies = await autopipe.timed(scripts[0].src.name, hook, ap.submit(unit, None))
        for r in replies:
            if isinstance(r, Exception):
                raise r  # as execute raises the first refused command
        return replies
    t0 = time.perf_counter()
    ok = False
    try:
        for attempt in (1, 2):
            pipe = client.pipeline(transaction=False)
            build(pipe)
            try:
                replies = list(await pipe.execute())
                ok = True
                return replies
            except NoScriptError:
                if attempt == 2:
                    raise
                for s in scripts:
                    await s.load(client)
        raise AssertionError("unreachable")
    finally:
        if hook is not None:
            hook(scripts[0].src.name, time.perf_counter() - t0, ok)


async def run_then(
    client: RedisClient,
    zadd: tuple[str, dict[str, int]] | None,
    script: Script,
    keys: Sequence[KeyT],
    args: Sequence[ArgT],
    then: Callable[[Any], Sequence[Script]],
) -> tuple[Any, list[Any]]:
    """One pipeline: ``zadd`` (an index write that must come first), ``script``'s call, then
    the commands ``then`` queues (it returns the scripts it used). Returns the script's reply
    and the following commands' replies, an error in the place of a failed one.

    Never sent twice once the script ran: on NOSCRIPT for it (so it did not run) the scripts
    are loaded and the pipeline sent again; a following command's NOSCRIPT loads its script
    for the next time and is returned as is (the caller does without that command)."""
    head = 0 if zadd is None else 1
    if (ap := autopipe.for_client(client)) is not None:
        used: list[Script] = []

        def build(pipe: Any) -> Sequence[Script]:
            if zadd is not None:
                pipe.zadd(zadd[0], zadd[1])
            script.queue(pipe, keys, args)
            used[:] = then(pipe)
            return (script, *used)

        # one unit of this turn's batch; a NOSCRIPT of the script resent it (autopipe)
        replies = await ap.submit(build, head)
        return await _then_replies(client, replies, head, used)
    for attempt in (1, 2):
        pipe: Any = client.pipeline(transaction=False)
        if zadd is not None:
            pipe.zadd(zadd[0], zadd[1])
        script.queue(pipe, keys, args)
        more = then(pipe)
        replies = list(await pipe.execute(raise_on_error=False))
        if attempt == 1 and isinstance(replies[head], NoScriptError):
            for s in (script, *more):
                await s.load(client)
            continue
        return await _then_replies(client, replies, head, more)
    raise AssertionError("unreachable")


async def _then_replies(
    client: RedisClient, replies: list[Any], head: int, more: Sequence[Script]
) -> tuple[Any, list[Any]]:
    """run_then's answer: the head commands' errors raised, the rest returned as they are
    (a NOSCRIPT among them loads its script for the next time)."""
    for r in replies[: head + 1]:
        if isinstance(r, Exception):
            raise r
    rest = replies[head + 1 :]
    if any(isinstance(r, NoScriptError) for r in rest):
        for s in more:
            await s.load(client)
    return replies[head], rest
