"""``streamward dev`` as a user runs it: a subprocess that must leave no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from streamward.tools.server import free_port
from tests.ops.conftest import wait_until

TOKEN_LINE = re.compile(r"^admin token: (\S+)$", re.M)


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux /proc): the API, runners and redis-server."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class DevProcess:
    """``python -m streamward.tools dev ...`` with its output collected and its children tracked."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamward.tools", "dev", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # a narrow terminal: pasteable commands must still come out as whole lines
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "80"},
        )
        self.output = ""
        self.children: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.output += raw.decode(errors="replace")

    def _watch(self) -> None:
        # runners come and go during the demo: remember every child ever seen
        while self.proc.poll() is None:
            self.children |= _children(self.proc.pid)
            time.sleep(0.05)

    def token(self) -> str:
        wait_until(
            lambda: TOKEN_LINE.search(self.output) is not None or self.proc.poll() is not None,
            "the admin token line",
            timeout_s=60,
        )
        m = TOKEN_LINE.search(self.output)
        assert m is not None, self.output
        return m.group(1)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._reader.join(5)
            self._watcher.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dev_port() -> int:
    return free_port()


def test_dev_no_demo_stops_everything_on_ctrl_c(dev_port: int) -> None:
    dev = DevProcess("--no-demo", "--port", str(dev_port), "--runners", "2")
    try:
        token = dev.token()
        url = f"http://127.0.0.1:{dev_port}"
        resp = httpx.get(f"{url}/admin/replicas", headers={"authorization": f"Bearer {token}"})
        assert resp.status_code == 200
        assert len(resp.json()) == 2
        assert f"curl -s {url}/admin/locks -H 'authorization: Bearer {token}'" in dev.output
        # the banner hands the CLI what it needs, and where the live page is
        assert f"export STREAMWARD_API_URL={url}" in dev.output
        assert f"export STREAMWARD_ADMIN_TOKEN={token}" in dev.output
        assert "/bin/activate" in dev.output and "streamward locks ls -w" in dev.output
        assert f"live page {url}/admin/ui" in dev.output
        wait_until(lambda: len(dev.children) >= 4, "redis, the API and two runners")
        dev.proc.send_signal(signal.SIGINT)
        assert dev.wait(90) == 0, dev.output
        assert "stopped: no process left behind." in dev.output
        assert [p for p in dev.children if _alive(p)] == []
    finally:
        dev.kill()


def test_dev_demo_then_exit(dev_port: int) -> None:
    dev = DevProcess("--exit-after-demo", "--port", str(dev_port))
    try:
        assert dev.token()
        assert dev.wait(180) == 0, dev.output
        out = dev.output
        assert "1. detached invoke" in out and "2. streamed invoke" in out
        assert re.search(r"taken over by \S+ with token \d+", out), out
        assert "run.completed" in out
        # the failover transcript shows every 10th output: what it leaves out is marked
        assert re.search(r"\.\.\. \d+ more run\.output entr(y|ies) not shown", out), out
        # the record: an embedded PostgreSQL, an archiver, and a transcript read across the
        # hot tail (its start from PostgreSQL)
        assert re.search(r"postgres +postgresql://sw@127\.0\.0\.1:\d+/postgres", out), out
        assert "4. the record" in out and "demo-failover" in out
        assert "demo-failover transcript starts ['1-0', '2-0', '3-0']" in out, out
        assert dev.children  # it did start processes...
        assert [p for p in dev.children if _alive(p)] == []  # ...and none is left
    finally:
        dev.kill()


def test_dev_port_in_use_is_an_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run(
            [sys.executable, "-m", "streamward.tools", "dev", "--port", str(port), "--no-demo"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 1
    assert f"port {port} is in use" in res.stdout
