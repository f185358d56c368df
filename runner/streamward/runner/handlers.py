"""Handler loading (``module:callable``), driving one run of a handler, the built-in ``echo``."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from streamward.lua.errors import InvalidId
from streamward.lua.inbox import InboxItem
from streamward.lua.keys import DEFAULT_TYPE, validate_type
from streamward.runner.context import Handler, RunContext
from streamward.runner.lifecycle import HandlerSpec, Session

# Shipper.put: (run_id, entry type, data) -> seq
Put = Callable[[str, str, Any], Awaitable[int]]


@dataclass
class Run:
    """One run in progress: its input, its context, the handler's task."""

    item: InboxItem
    ctx: RunContext
    task: asyncio.Task[int] | None = None
    cancel_reason: str | None = None  # set when cancelled on request (cancel / interrupt)

    @property
    def run_id(self) -> str:
        return self.item.run_id


class HandlerLoadError(ValueError):
    """The ``--handler`` spec does not name an importable callable."""


class EchoFailed(RuntimeError):
    """Raised by ``echo`` after its last chunk when the input asks for ``fail: true``."""


def parse_handler_specs(text: str, default_type: str = DEFAULT_TYPE) -> dict[str, str]:
    """``[type=]module:callable`` specs, comma-separated (``STREAMWARD_HANDLER``, or several
    ``--handler``), as type -> spec; a spec without ``type=`` serves ``default_type``."""
    specs: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, spec = item.partition("=")
        if not eq:
            name, spec = default_type, item
        try:
            validate_type(name.strip(), "handler type")
        except InvalidId as exc:
            raise HandlerLoadError(f"handler {item!r}: {exc}") from None
        if name.strip() in specs:
            raise HandlerLoadError(f"handler {item!r}: type {name.strip()!r} named twice")
        specs[name.strip()] = spec.strip()
    if not specs:
        raise HandlerLoadError("no handler given: expected [type=]module:callable")
    return specs


def load_handlers(text: str, default_type: str = DEFAULT_TYPE) -> dict[str, HandlerSpec]:
    """Load every handler of a ``parse_handler_specs`` list: type -> handler."""
    return {t: load_handler(spec) for t, spec in parse_handler_specs(text, default_type).items()}


def _check_host(spec: str, obj: Any) -> None:
    """Refuse, with one line, what cannot be driven: a function handler must be an async
    generator function; a host class needs ``run`` an async generator function and its
    hooks (``activate``, ``passivate``) coroutine functions."""
    if isinstance(obj, type):
        run = getattr(obj, "run", None)
        if run is None or not inspect.isasyncgenfunction(run):
            raise HandlerLoadError(
                f"handler {spec!r}: {obj.__name__}.run must be an async generator "
                "(async def run(self, ctx, input): ... yield x)"
            )
        for hook in ("activate", "passivate"):
            fn = getattr(obj, hook, None)
            if fn is not None and not inspect.iscoroutinefunction(fn):
                raise HandlerLoadError(
                    f"handler {spec!r}: {obj.__name__}.{hook} must be a coroutine "
                    f"function (async def {hook}(self, ctx, ...))"
                )
        return
    if not inspect.isasyncgenfunction(obj):
        name = getattr(obj, "__name__", type(obj).__name__)
        raise HandlerLoadError(
            f"handler {spec!r}: {name} is not an async generator function "
            f"(write it as: async def {name}(ctx, input): ... yield x)"
        )


def load_handler(spec: str) -> HandlerSpec:
    """Import ``module:callable`` (the attribute may be dotted: ``module:Class.method``): a
    function handler, or a ``Session`` subclass (one instance per session activation).
    Modules resolve from the working directory first (as uvicorn and celery do)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerLoadError(f"handler {spec!r}: expected 'module:callable'")
    cwd = os.getcwd()
    if cwd not in sys.path:  # `streamward runner --handler app:run` run from the project
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a broken module fails the same way as a missing one
        raise HandlerLoadError(
            f"handler {spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise HandlerLoadError(
                f"handler {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise HandlerLoadError(
            f"handler {spec!r}: {attr!r} is a {type(obj).__name__}, not callable"
        )
    _check_host(spec, obj)
    if isinstance(obj, type) and issubclass(obj, Session):
        return obj
    return cast(Handler, obj)


def _int_field(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name, default)
    # bool is an int subclass in Python, but true/false is not a count
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"echo: {name!r} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"echo: {name!r} must be >= 0, got {value}")
    return value


async def echo(ctx: RunContext, input: Any) -> AsyncIterator[Any]:
    """Yield ``chunks`` x ``{"text", "i"}``, sleeping ``delay_ms`` before each; maybe fail."""
    if not isinstance(input, dict):
        kind = "null" if input is None else type(input).__name__
        raise TypeError(
            "echo: input must be a JSON object like "
            f'{{"text": "hi", "chunks": 1, "delay_ms": 0, "fail": false}}, got {kind}'
        )
    text = input.get("text", "")
    if not isinstance(text, str):
        raise TypeError(f"echo: 'text' must be a string, got {type(text).__name__}")
    chunks = _int_field(input, "chunks", 1)
    delay_ms = _int_field(input, "delay_ms", 0)
    fail = input.get("fail", False)
    if not isinstance(fail, bool):
        raise TypeError(f"echo: 'fail' must be a boolean, got {type(fail).__name__}")
    for i in range(chunks):
        await asyncio.sleep(delay_ms / 1000)
        yield {"text": text, "i": i}
    if fail:
        raise EchoFailed("echo: failing on request (fail: true)")


async def drive(handler: Handler, ctx: RunContext, input: Any, put: Put) -> int:
    """Run the handler once, putting each output as ``run.output``; returns how many."""
    result: Any = handler(ctx, input)
    if inspect.isawaitable(result):  # also accept ``async def`` returning an iterator
        result = await result
    if not hasattr(result, "__aiter__"):
        raise TypeError(
            f"handler returned {type(result).__name__}, expected an async iterator "
            "(write it as an async generator: async def handler(ctx, input): ... yield x)"
        )
    iterator = aiter(result)
    n = 0
    try:
        async for out in iterator:
            try:
                await put(ctx.run_id, "run.output", out)
            except TypeError as exc:
                raise TypeError(f"output {n} is not JSON-serialisable: {exc}") from None
            n += 1
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    return n


def run_outcome(
    task: asyncio.Task[int], cancel_reason: str | None
) -> tuple[str, dict[str, Any], str]:
    """The terminal entry (type, data) and the metrics outcome of a finished run's task."""
    if cancel_reason is not None or task.cancelled():
        return "run.cancelled", {"reason": cancel_reason or "cancel"}, "cancelled"
    if (exc := task.exception()) is not None:
        error = str(exc) or type(exc).__name__
        return "run.failed", {"error": error, "error_type": type(exc).__name__}, "failed"
    return "run.completed", {"outputs": task.result()}, "completed"
