"""Prometheus metrics of one runner (served on ``--metrics-port`` when set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class Metrics:
    """Per-process registry (not the global one, so tests can build many replicas)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("streamward_runner_sessions", "Session leases held.", registry=r)
        self.runs_inflight = Gauge("streamward_runner_runs_inflight", "Runs running.", registry=r)
        self.runs = Counter(
            "streamward_runner_runs", "Runs ended, by outcome.", ["outcome"], registry=r
        )
        self.takeovers = Counter(
            "streamward_runner_takeovers", "Session leases taken over from dead owners.", registry=r
        )
        self.ship_retries = Counter(
            "streamward_runner_ship_retries", "Transcript batches retried.", registry=r
        )
        self.fenced = Counter(
            "streamward_runner_fenced", "Times this replica fenced itself or lost its lease.",
            registry=r,
        )  # fmt: skip
        self.draining = Gauge("streamward_runner_draining", "1 while draining.", registry=r)

    def serve(self, port: int) -> None:
        """Serve /metrics from a daemon thread."""
        start_http_server(port, addr="0.0.0.0", registry=self.registry)
