"""``GET /metrics`` of a live API process, parsed with prometheus-client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from streamward.client import StreamwardClient
from tests.ops.conftest import TOKEN_A, System, http_get

Samples = list[Sample]

EXPECTED = {
    "streamward_api_http_requests": "counter",
    "streamward_api_http_request_duration_seconds": "histogram",
    "streamward_api_invoke_duration_seconds": "histogram",
    "streamward_api_ingest_entries": "counter",
    "streamward_api_ingest_duplicates": "counter",
    "streamward_redis_script_duration_seconds": "histogram",
    "streamward_build_info": "gauge",
    "streamward_work_backlog": "gauge",
    "streamward_replicas": "gauge",
    "streamward_api_redis_up": "gauge",
    "streamward_redis_autopipeline_batches": "counter",
    "streamward_redis_autopipeline_calls": "counter",
}
# anything naming a session, run or caller would be a series per session
FORBIDDEN_LABELS = {"session", "session_id", "run_id", "project", "token", "path"}


def scrape(system: System) -> dict[str, Samples]:
    resp = http_get(f"{system.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    for name, kind in EXPECTED.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, name
    return {name: list(f.samples) for name, f in families.items()}


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_move_after_invoke_and_ingest(system: System) -> None:
    before = scrape(system)
    with StreamwardClient(system.url, token=TOKEN_A) as c:
        accepted = c.invoke("metrics-s", {"text": "m", "chunks": 3})
        entries = list(c.stream("metrics-s", run_id=accepted.run_id))
    assert entries[-1].type == "run.completed"
    # replay the run's first entry with the owner's current token: a duplicate, not a write
    with system.admin() as admin:
        token = admin.lock("metrics-s").token
        assert token is not None
        replay = admin.ingest(
            "metrics-s",
            accepted.run_id,
            token,
            [{"seq": entries[0].seq, "type": entries[0].type, "data": entries[0].data}],
        )
    assert replay.duplicates == 1 and replay.accepted == 0
    http_get(f"{system.url}/no/such/path")
    after = scrape(system)

    inv = "streamward_api_invoke_duration_seconds"
    assert value(after[inv], f"{inv}_count", mode="detached") == (
        value(before[inv], f"{inv}_count", mode="detached") + 1
    )
    ingest = "streamward_api_ingest_entries"
    # run.started, 3 outputs, run.completed written by the runner through admin ingest
    assert value(after[ingest], f"{ingest}_total") >= value(before[ingest], f"{ingest}_total") + 5
    dup = "streamward_api_ingest_duplicates"
    assert value(after[dup], f"{dup}_total") == value(before[dup], f"{dup}_total") + 1

    http = "streamward_api_http_requests"
    route = "/v1/sessions/{session_id}/invoke"
    assert value(after[http], f"{http}_total", route=route, status_class="2xx") == (
        value(before[http], f"{http}_total", route=route, status_class="2xx") + 1
    )
    assert value(after[http], f"{http}_total", route="unmatched", status_class="4xx") >= 1

    script = "streamward_redis_script_duration_seconds"
    for name in ("enqueueInput", "ingestEntries", "readLease"):
        assert value(after[script], f"{script}_count", script=name, result="ok") > value(
            before[script], f"{script}_count", script=name, result="ok"
        ), name

    # the invoke's enqueue left through auto-pipelining (lua/autopipe.py), on by default
    piped = "streamward_redis_autopipeline_calls"
    assert value(after[piped], f"{piped}_total") > value(before[piped], f"{piped}_total")
    batches = "streamward_redis_autopipeline_batches"
    assert 0 < value(after[batches], f"{batches}_total") <= value(after[piped], f"{piped}_total")

    build = after["streamward_build_info"][0]
    assert build.labels["component"] == "api" and build.labels["version"]
    assert value(after["streamward_replicas"], "streamward_replicas", state="ready") >= 2
    assert value(after["streamward_api_redis_up"], "streamward_api_redis_up") == 1
    assert after["streamward_work_backlog"][0].value >= 0

    for samples in after.values():
        for s in samples:
            assert not FORBIDDEN_LABELS & set(s.labels), s
            assert not s.name.endswith("_ms"), s  # base units only


def test_metrics_need_no_token(system: System) -> None:
    # Prometheus scrapes without credentials; the page exposes no session or caller names
    resp = http_get(f"{system.url}/metrics", headers={"authorization": "Bearer nonsense"})
    assert resp.status_code == 200
    assert "alpha" not in resp.text and "beta" not in resp.text


def test_requests_refused_before_routing_keep_their_route(system: System) -> None:
    http = "streamward_api_http_requests"
    route = "/v1/sessions/{session_id}/invoke"

    def refused() -> float:
        return value(scrape(system)[http], f"{http}_total", route=route, status_class="4xx")

    before = refused()
    # over the body limit: answered 413 by the middleware before FastAPI routes it
    resp = httpx.post(
        f"{system.url}/v1/sessions/big/invoke",
        content=b"x" * (1024 * 1024 + 1),
        headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN_A}"},
        timeout=10.0,
    )
    assert resp.status_code == 413
    assert refused() == before + 1


def test_script_timings_reach_each_live_timer_once_and_a_dropped_one_no_more() -> None:
    import gc

    from prometheus_client import CollectorRegistry

    from streamward.core import metrics as core_metrics

    regs = [CollectorRegistry(), CollectorRegistry()]
    timers = [core_metrics.ScriptTimer(core_metrics.script_histogram(r)) for r in regs]
    for t in timers:
        core_metrics.add_script_timer(t)
    core_metrics.add_script_timer(timers[0])  # added twice: still timed once

    def count(reg: CollectorRegistry, result: str) -> float | None:
        labels = {"script": "peekInbox", "result": result}
        return reg.get_sample_value("streamward_redis_script_duration_seconds_count", labels)

    core_metrics._dispatch("peekInbox", 0.001, True)
    core_metrics._dispatch("peekInbox", 0.002, False)
    assert [count(r, "ok") for r in regs] == [1.0, 1.0]
    assert [count(r, "error") for r in regs] == [1.0, 1.0]
    del timers[1], t
    gc.collect()
    assert len([r for r in core_metrics._listeners if r() is not None]) >= 1
    core_metrics._dispatch("peekInbox", 0.001, True)
    assert count(regs[0], "ok") == 2.0 and count(regs[1], "ok") == 1.0  # dropped: no more
