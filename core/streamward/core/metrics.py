"""Prometheus pieces both the API and the runner use: build info, Redis script timings.

Names are prefixed ``streamward_``, in base units (seconds), and never labelled by session.
"""

from __future__ import annotations

import platform
import weakref
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, Info
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

import streamward.lua.loader
from streamward.lua.autopipe import AutoPipeline
from streamward.lua.client import own_version

# sub-millisecond Redis calls up to a slow second
SCRIPT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def version() -> str:
    """The installed distribution's version (``0.0.0`` when running from a bare checkout)."""
    return own_version()


ScriptListener = Callable[[str, float, bool], None]
# weakly held (apps come and go), in a tuple: every script call walks it, and a WeakSet's
# iteration (a generator and a guard) cost a few per cent of a runner's CPU
_listeners: tuple[weakref.ref[ScriptTimer], ...] = ()


class ScriptTimer:
    """Receives every Lua script call's timing while it is alive (see ``add_script_timer``)."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._series: dict[tuple[str, bool], Any] = {}  # labels() resolved once per series

    def __call__(self, script: str, seconds: float, ok: bool) -> None:
        series = self._series.get((script, ok))
        if series is None:
            series = self.histogram.labels(script, "ok" if ok else "error")
            self._series[(script, ok)] = series
        series.observe(seconds)


def _dispatch(script: str, seconds: float, ok: bool) -> None:
    for ref in _listeners:
        timer = ref()
        if timer is not None:
            timer(script, seconds, ok)


def _forget(ref: weakref.ref[ScriptTimer]) -> None:
    global _listeners
    _listeners = tuple(r for r in _listeners if r is not ref)


def add_script_timer(timer: ScriptTimer) -> None:
    """Route ``lua.loader`` script timings to ``timer`` (held weakly: apps come and go)."""
    global _listeners
    if not any(r() is timer for r in _listeners):
        _listeners = (*_listeners, weakref.ref(timer, _forget))
    streamward.lua.loader.on_script_timing = _dispatch


def script_histogram(registry: CollectorRegistry) -> Histogram:
    """The Redis script latency histogram (shared shape for the API and the runner)."""
    return Histogram(
        "streamward_redis_script_duration_seconds",
        "Lua script call latency seen by this process (EVALSHA round trip), by script.",
        ["script", "result"],
        buckets=SCRIPT_BUCKETS,
        registry=registry,
    )


def build_info(registry: CollectorRegistry, component: str) -> Info:
    info = Info("streamward_build", "Build of this process.", registry=registry)
    info.info({"version": version(), "python": platform.python_version(), "component": component})
    return info


class AutoPipelineMetrics(Collector):
    """How much auto-pipelining batches (lua/autopipe.py): registered with the process's
    registry once; ``ap`` set when the Redis client is made (nothing exported while None)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ap: AutoPipeline | None = None
        registry.register(self)

    def collect(self) -> list[CounterMetricFamily]:
        if self.ap is None:
            return []
        return [
            CounterMetricFamily(
                "streamward_redis_autopipeline_batches",
                "Pipelines sent by auto-pipelining (one per event-loop turn with Redis calls).",
                value=self.ap.batches,
            ),
            CounterMetricFamily(
                "streamward_redis_autopipeline_calls",
                "Calls (script calls and grouped commands) sent in those pipelines "
                "(calls / batches = calls per round trip).",
                value=self.ap.units,
            ),
        ]
