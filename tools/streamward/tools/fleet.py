"""A local fleet of real processes (API instances, runners) for dev, benches and tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from streamward.lua.client import connect_sync
from streamward.lua.config import redis_config_from_env
from streamward.lua.keys import Keys
from streamward.tools.server import free_port, wait_ready


@dataclass
class Proc:
    """One child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def exit_log(self) -> str | None:
        """None while running, else the tail of its log (for start-up errors)."""
        return None if self.alive() else self.log()[-3000:]

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


@dataclass
class Fleet:
    """Starts API instances and runners against one Redis; ``stop()`` leaves nothing behind."""

    redis_url: str
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="streamward-")))
    key_prefix: str = "sw"
    procs: list[Proc] = field(default_factory=list)
    _n: int = 0

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "STREAMWARD_REDIS_URL": self.redis_url,
                "STREAMWARD_ADMIN_TOKEN": self.admin_token,
                "STREAMWARD_KEY_PREFIX": self.key_prefix,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        env.update(extra or {})
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        self._n += 1
        log_path = self.workdir / f"{self._n:03d}-{name}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "streamward.tools", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches only the parent
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    @property
    def api_url(self) -> str:
        for p in self.procs:
            if p.name.startswith("api") and p.alive():
                return p.url
        raise RuntimeError("no API instance is running")

    def start_api(
        self, port: int | None = None, env: dict[str, str] | None = None, wait_s: float = 30.0
    ) -> Proc:
        port = port or free_port()
        proc = self._spawn(
            f"api-{port}", ["api", "--host", "127.0.0.1", "--port", str(port)], self._env(env)
        )
        proc.port = port

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{proc.url}/readyz", timeout=1.0).status_code == 200
            return False

        try:
            wait_ready(ready, exited=proc.exit_log, what="API", timeout_s=wait_s)
        except RuntimeError as exc:
            if proc.alive():  # timed out: the log says why (an exit already carries it)
                raise RuntimeError(f"{exc}\n{proc.log()[-3000:]}") from None
            raise
        return proc

    def start_runner(
        self,
        replica_id: str | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        api_url: str | None = None,
        wait_s: float = 30.0,
    ) -> Proc:
        replica_id = replica_id or f"runner-{secrets.token_hex(3)}"
        argv = ["runner", "--replica-id", replica_id, "--api-url", api_url or self.api_url]
        proc = self._spawn(replica_id, argv + (args or []), self._env(env))
        if wait_s > 0:
            self.wait_replica(proc, replica_id, wait_s)
        return proc

    def wait_replica(self, proc: Proc, replica_id: str, wait_s: float = 30.0) -> None:
        """Wait until the runner's replica lease is in Redis."""
        key = Keys(self.key_prefix).replica(replica_id).lease
        # the Redis the processes use (STREAMWARD_REDIS_MODE etc. in env: Sentinel, Cluster)
        client = connect_sync(redis_config_from_env(self._env(None)), socket_timeout=2.0)
        try:
            wait_ready(
                lambda: bool(client.exists(key)),
                exited=proc.exit_log,
                what=f"runner {replica_id}",
                timeout_s=wait_s,
            )
        finally:
            client.close()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.alive():
                p.terminate(timeout_s=25)
        self.procs.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
