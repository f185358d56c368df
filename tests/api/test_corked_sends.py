"""One send per response, and at once (``api/serving.py``): the API's uvicorn protocol corks a
response's head and body into one socket write, and sends it the moment the response is
complete, not at the end of the loop turn (a waiting caller has it a turn sooner). Driven
through the real protocol class with a transport that records its writes."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from streamward.api.serving import DeadlineProtocol

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Wire(asyncio.Transport):
    """The socket's side of the transport: what was written, in which writes."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        addresses = {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}
        return addresses.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _serve(app: Any, wire: Wire) -> DeadlineProtocol:
    config = Config(app=app, http="httptools", lifespan="off", log_level="warning")
    config.load()
    protocol = DeadlineProtocol(config, ServerState(), {})
    protocol.connection_made(wire)
    protocol.data_received(REQUEST)
    for _ in range(5):  # the request's ASGI task runs, then the loop's later turns
        await asyncio.sleep(0)
    return protocol


async def test_a_complete_response_leaves_in_one_send_before_the_turn_ends() -> None:
    wire = Wire()
    when_done: list[list[bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        head = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        assert wire.sent == []  # the head waits for its body
        await send({"type": "http.response.body", "body": b"ok"})
        when_done.append(list(wire.sent))  # sent by the time the last send returned

    protocol = await _serve(app, wire)
    response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert when_done == [[response]]
    assert wire.sent == [response]  # and nothing more at the end of the turn
    protocol.connection_lost(None)


async def test_a_streamed_response_sends_its_chunks_per_turn_and_its_end_at_once() -> None:
    wire = Wire()
    after_chunk: list[list[bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        after_chunk.append(list(wire.sent))  # corked until the turn ends
        await asyncio.sleep(0)
        after_chunk.append(list(wire.sent))
        await send({"type": "http.response.body", "body": b"b"})
        after_chunk.append(list(wire.sent))  # the end: sent when the last send returned

    protocol = await _serve(app, wire)
    assert after_chunk[0] == [] and len(after_chunk[1]) == 1 and after_chunk[2] == wire.sent
    assert after_chunk[1][0].startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding" in wire.sent[0]
    assert b"".join(wire.sent).endswith(b"1\r\nb\r\n0\r\n\r\n")
    assert len(wire.sent) == 2  # the first turn's head and chunk, then the rest at once
    protocol.connection_lost(None)
