"""A callback receiver for the tests: a real HTTP server (http.server) on a free port in a
thread, failing each delivery id's first ``fail_first`` attempts, then answering 200."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streamward.tools.server import free_port


@dataclass
class Received:
    delivery_id: str
    headers: dict[str, str]
    body: bytes
    status: int


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check, as docs/api.md#callbacks shows it."""
    parts = [p.split("=", 1) for p in header.split(",")]
    ts = next((v for k, v in parts if k == "t"), None)
    if ts is None or abs(time.time() - int(ts)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, expected) for k, v in parts)


@dataclass
class Receiver:
    fail_first: int = 3
    always_fail: bool = False
    # answer every attempt 302 to this same URL (a redirect must not be followed)
    redirect: bool = False
    # the n-th attempt (1-based) of any delivery waits this long before answering
    slow_attempt: int = 0
    slow_s: float = 0.0
    port: int = field(default_factory=free_port)
    got: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    slow_started: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def attempts(self, delivery_id: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.got if delivery_id in (None, r.delivery_id))

    def successes(self) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.status == 200]

    def start(self) -> Receiver:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                did = self.headers.get("x-streamward-delivery") or ""
                with rec.lock:
                    n = 1 + sum(1 for r in rec.got if r.delivery_id == did)
                    status = 500 if rec.always_fail or n <= rec.fail_first else 200
                    status = 302 if rec.redirect else status
                    rec.got.append(Received(did, dict(self.headers.items()), body, status))
                if n == rec.slow_attempt:
                    rec.slow_started.set()
                    time.sleep(rec.slow_s)
                self.send_response(status)
                if status == 302:
                    self.send_header("location", rec.url)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
