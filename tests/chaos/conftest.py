"""The ``chaos`` marker: the short chaos profile (a real fleet for about 70 s)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # registered here rather than in pyproject.toml: it belongs to this directory's tests
    config.addinivalue_line(
        "markers", "chaos: a real fleet under seeded faults for ~70 s (tests/chaos/, slow)"
    )
