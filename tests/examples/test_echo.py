"""The echo example through the harness: a function handler, as today."""

from __future__ import annotations

from streamward.runner.examples.echo import echo
from streamward.testing import SessionHarness


async def test_echo_yields_chunks_and_fails_on_request() -> None:
    async with SessionHarness(echo) as h:
        ok = await h.invoke({"text": "hi", "chunks": 3})
        bad = await h.invoke({"text": "x", "fail": True})
        wrong = await h.invoke("not an object")
    assert ok.outputs == [{"text": "hi", "i": i} for i in range(3)]
    assert bad.status == "failed" and bad.outputs == [{"text": "x", "i": 0}]
    assert wrong.status == "failed" and wrong.terminal.data["error_type"] == "TypeError"
