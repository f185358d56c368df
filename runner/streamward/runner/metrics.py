"""Prometheus metrics of one runner (served on ``--metrics-port`` when set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streamward.core.metrics import (
    AutoPipelineMetrics,
    ScriptTimer,
    add_script_timer,
    build_info,
    script_histogram,
)


class Metrics:
    """Per-process registry (not the global one, so tests can build many replicas)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.autopipeline = AutoPipelineMetrics(r)
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
        self.writes_refused = Gauge(
            "streamward_runner_redis_writes_refused",
            "1 while Redis answers but refuses writes (OOM, MISCONF, READONLY).",
            registry=r,
        )
        self.evicted = Counter(
            "streamward_runner_sessions_evicted",
            "Idle sessions passivated at max_sessions to admit waiting work.",
            registry=r,
        )
        self.poison_inputs = Counter(
            "streamward_runner_poison_inputs",
            "Runs ended run.failed (error_type poison): they took down N owners in a row.",
            registry=r,
        )
        self.draining = Gauge("streamward_runner_draining", "1 while draining.", registry=r)
        self.acquires = Counter(
            "streamward_runner_lease_acquires",
            "Session lease claims, by result (acquired, takeover, held).",
            ["result"],
            registry=r,
        )
        self.renewals = Counter(
            "streamward_runner_lease_renewals",
            "Session lease renewals, by result (renewed, lost).",
            ["result"],
            registry=r,
        )
        self.lost = Counter(
            "streamward_runner_leases_lost",
            "Session leases lost, by reason (expired, not_owner, stale_token).",
            ["reason"],
            registry=r,
        )
        self.sweep_requeued = Counter(
            "streamward_runner_sweep_requeued",
            "Sessions with waiting input and no live owner re-queued by the liveness sweep.",
            registry=r,
        )
        self.pending_index = Gauge(
            "streamward_runner_pending_index_size",
            "Entries in the pending index (sw:pending), as seen by the last sweep (watchdog).",
            registry=r,
        )
        self.heartbeat_last_success = Gauge(
            "streamward_runner_heartbeat_last_success_timestamp_seconds",
            "Unix time of the last successful replica heartbeat.",
            registry=r,
        )
        self.run_duration = Histogram(
            "streamward_runner_run_duration_seconds",
            "Run duration from start to terminal entry, by outcome.",
            ["outcome"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.script_timer = ScriptTimer(script_histogram(r))
        add_script_timer(self.script_timer)
        build_info(r, "runner")

    def serve(self, port: int) -> None:
        """Serve /metrics from a daemon thread."""
        start_http_server(port, addr="0.0.0.0", registry=self.registry)
