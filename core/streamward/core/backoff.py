"""Retry delays shared by every loop that retries Redis or HTTP (runner loops, the shipper)."""

from __future__ import annotations

import random

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0


def backoff_s(attempt: int, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """Exponential backoff with equal jitter: half fixed, half random (no thundering herd)."""
    d = min(cap_s, base_s * 2.0**attempt)
    return d / 2 + random.uniform(0, d / 2)
