"""Fixtures for the runner tests: a fleet with the real API and a short replica TTL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streamward.tools.fleet import Fleet
from streamward.tools.server import RedisServer
from tests.runner.helpers import RUNNER_ENV, sync_redis


@pytest.fixture
def api_fleet(fleet: Fleet) -> Fleet:
    """The shared test Redis (flushed), the real API on a free port, TTL 2 s for runners."""
    fleet.env.update(RUNNER_ENV)
    fleet.start_api()
    return fleet


@pytest.fixture
def rc(redis_server: RedisServer) -> Iterator[Any]:
    client = sync_redis(redis_server.url)
    try:
        yield client
    finally:
        client.close()
