"""Fixtures for the lua/ contract tests (the real redis-server comes from tests/conftest.py)."""

from __future__ import annotations

import pytest

from streamward.lua.keys import Keys, SessionKeys


@pytest.fixture
def session(keys: Keys) -> SessionKeys:
    return keys.session("proj", "sess-1")
