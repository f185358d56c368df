"""``Sandbox``: one long-lived OS child process per session, a small Python REPL started in
``activate``, used by every run and terminated in ``passivate``, whatever ends the
ownership (idle, drain, stopped, deleted, reset, lost).

Input: ``{"code": str}``, executed in the REPL's one namespace (a later run sees an earlier
run's variables). Output: ``{"ok", "stdout", "value", "error", "pid", "runs"}``: ``value`` is
the ``repr`` of the last expression, ``pid`` the sandbox process, ``runs`` how many inputs
this sandbox has executed.

No orphan is left when the runner itself dies (kill -9, OOM kill), when no hook can run:
the child exits when its stdin (a pipe from the runner) closes, and on Linux it also asks
the kernel to kill it with its parent (``PR_SET_PDEATHSIG``), which covers a child busy in
a loop that never reads stdin again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson

from streamward.runner import RunContext, Session, SessionContext

RUN_TIMEOUT_S = 30.0
STOP_WAIT_S = 2.0
STDOUT_MAX_CHARS = 64 * 1024

# the child: reads one JSON request per line, answers one JSON line; exits at EOF
REPL = r"""
import ast, contextlib, ctypes, io, json, os, signal, sys
parent = int(sys.argv[1])  # the runner's pid
if sys.platform.startswith("linux"):
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != parent:  # the runner died before the line above
    sys.exit(0)
ns, runs = {"__name__": "__sandbox__"}, 0
for line in sys.stdin:
    runs += 1
    code = json.loads(line)["code"]
    out, value, error = io.StringIO(), None, None
    try:
        with contextlib.redirect_stdout(out):
            # like a notebook cell: the statements run, the last expression is the value
            tree = ast.parse(code, "<run>", "exec")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<run>", "exec"), ns)
            if last is not None:
                value = repr(eval(compile(ast.Expression(last.value), "<run>", "eval"), ns))
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
    reply = {"ok": error is None, "stdout": out.getvalue()[:STDOUT_MAX], "value": value,
             "error": error, "pid": os.getpid(), "runs": runs}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
""".replace("STDOUT_MAX", str(STDOUT_MAX_CHARS))


class SandboxGone(RuntimeError):
    """The sandbox process exited or stopped answering."""


def _code(input: Any) -> str:
    if not isinstance(input, dict) or not isinstance(input.get("code"), str):
        raise TypeError('sandbox input must be an object {"code": "..."}')
    return str(input["code"])


class Sandbox(Session):
    proc: asyncio.subprocess.Process | None = None

    async def activate(self, ctx: SessionContext) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-u", "-c", REPL, str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip

    async def run(self, ctx: RunContext, input: Any) -> AsyncIterator[Any]:
        code = _code(input)
        proc = self.proc
        if proc is None or proc.returncode is not None or proc.stdin is None or not proc.stdout:
            raise SandboxGone("the sandbox process is not running")
        proc.stdin.write(orjson.dumps({"code": code}) + b"\n")
        await proc.stdin.drain()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), RUN_TIMEOUT_S)
        except TimeoutError:
            proc.kill()  # stuck: the next run would read this run's late answer
            raise SandboxGone(f"no answer within {RUN_TIMEOUT_S}s: sandbox killed") from None
        if not line:
            raise SandboxGone(f"the sandbox exited (code {await proc.wait()})")
        yield orjson.loads(line)

    async def passivate(self, ctx: SessionContext, reason: str) -> None:
        """Stop the child: EOF first (it exits by itself), then SIGTERM, then SIGKILL. Also
        when the hook is cancelled (its deadline, the actor cut short): kill, never leak."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            for stop in (None, proc.terminate):
                if stop is not None:
                    with contextlib.suppress(ProcessLookupError):
                        stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
                    return
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # cancelled mid-way: the process must not outlive us
