"""deploy/observability: the Grafana dashboard and the alert rules name only metrics a real API
and a real runner expose, and every alert links a runbook that exists in docs/operations.md."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamward.client import StreamwardClient
from streamward.tools.fleet import Fleet
from streamward.tools.server import free_port
from tests.deploy.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULES = OBSERVABILITY / "prometheus-rules.yaml"
MONITORING = ROOT / "deploy" / "k8s" / "components" / "monitoring"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/streamward/streamward/blob/main/docs/operations.md#"
# labels Prometheus adds to every series from its target (ServiceMonitor), not in /metrics
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}

# -- PromQL: the metric names an expression reads ---------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TOKEN = re.compile(
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<other>.)",
    re.S,
)
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
KEYWORDS = {
    # aggregations, binary and set operators, modifiers, literals
    *[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ],
    *["limitk", "limit_ratio", "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"],
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in ``expr``: identifiers that are not functions, aggregations, keywords,
    label names (inside ``{}`` or grouping lists) or durations (inside ``[]``)."""
    text = _STRING.sub('""', expr)  # braces or names inside label values never count
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for m in _TOKEN.finditer(text):
        name = m.group("id")
        if name is None or name.lower() in KEYWORDS:
            continue
        if text[m.end() :].lstrip().startswith("("):
            continue  # a function call: rate(...), histogram_quantile(...), time()
        names.add(name)
    return names


def promql_label_names(expr: str) -> set[str]:
    """Label names ``expr`` matches on or groups by."""
    text = _STRING.sub('""', expr)
    out = {
        m.group(1) for braces in re.findall(r"\{([^}]*)\}", text) for m in _MATCHER.finditer(braces)
    }
    for _, group in _GROUPING.findall(text):
        out |= {label.strip() for label in group.split(",") if label.strip()}
    return out


def test_the_promql_reader_finds_metrics_and_only_metrics() -> None:
    """The control: functions, aggregations, label names and values, durations and numbers
    are not metrics; a metric after ``on(...)``/``offset`` is."""
    expr = (
        'histogram_quantile(0.99, sum by (le, mode) (rate(a_bucket{mode="x{y}", b=~"c|d"}[5m])))'
        " > 1e3 and on (pod) max without (x) (b_total offset 5m) / ignoring(z) time() - c"
        " unless topk(3, d:rule[1h:5m])"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c", "d:rule"}
    assert promql_label_names(expr) == {"le", "mode", "b", "pod", "x", "z"}
    assert promql_metric_names("time() - streamward_x_seconds") == {"streamward_x_seconds"}


# -- what the dashboard and the rules query ----------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, expression) of every panel query and query variable."""
    for panel in dashboard()["panels"]:
        for t in panel.get("targets", []):
            yield f"panel {panel['title']!r}", t["expr"]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            # label_values(metric, label): the metric is what must exist
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            yield f"variable {var['name']}", m.group(1) if m else query


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def rule_exprs() -> Iterator[tuple[str, str]]:
    for r in rules():
        yield f"rule {r.get('alert') or r.get('record')}", r["expr"]


def all_exprs() -> list[tuple[str, str]]:
    return [*dashboard_exprs(), *rule_exprs()]


# -- live /metrics of a real API and a real runner ---------------------------------------------

Exposed = dict[str, tuple[str, set[str]]]  # series name -> (family, label names seen)


def series_of(family: str, kind: str) -> set[str]:
    """The series names a family of this type puts in Prometheus (whether or not it has
    samples yet: a labelled metric shows only HELP/TYPE until its first child)."""
    if kind == "counter":
        return {f"{family}_total", f"{family}_created"}
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count", f"{family}_created"}
    if kind == "summary":
        return {family, f"{family}_sum", f"{family}_count", f"{family}_created"}
    return {family}  # gauge, info (exposed as a gauge), unknown


def exposed(text: str) -> Exposed:
    out: Exposed = {}
    for fam in text_string_to_metric_families(text):
        labels = {k for s in fam.samples for k in s.labels} - {"le", "quantile"}
        for name in series_of(fam.name, fam.type) | {s.name for s in fam.samples}:
            out[name] = (fam.name, labels)
    return out


@pytest.fixture(scope="module")
def live_metrics(redis_server: Any) -> Iterator[tuple[Exposed, Exposed]]:
    """(API, runner) series of one real API process and one real runner process that ran
    an invoke, on the tests' redis-server."""
    import redis as syncredis

    c = syncredis.Redis.from_url(redis_server.url)
    c.flushall()
    c.close()
    with Fleet(redis_server.url) as fleet:
        api = fleet.start_api()
        port = free_port()
        fleet.start_runner("obs-r1", args=["--metrics-port", str(port)])
        with StreamwardClient(api.url) as client:
            accepted = client.invoke("obs-s", {"text": "hello"})
            entries = list(client.stream("obs-s", run_id=accepted.run_id))
        assert entries[-1].type == "run.completed"
        api_text = httpx.get(f"{api.url}/metrics", timeout=10.0).text
        runner_text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10.0).text
    yield exposed(api_text), exposed(runner_text)


def test_every_metric_the_dashboard_and_rules_name_is_exposed(
    live_metrics: tuple[Exposed, Exposed],
) -> None:
    api, runner = live_metrics
    # the processes really served their own metrics (a broken scrape would pass vacuously)
    assert "streamward_api_invoke_duration_seconds_bucket" in api
    assert "streamward_runner_heartbeat_last_success_timestamp_seconds" in runner
    both = {**runner, **api}
    checked = 0
    for where, expr in all_exprs():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            assert name in both, f"{where}: {name} is not in the API's or a runner's /metrics"
        checked += len(names)
        seen = [both[n][1] for n in names]
        if all(seen):  # label names are known once every family there has samples
            unknown = promql_label_names(expr) - TARGET_LABELS - {"le"} - set().union(*seen)
            assert not unknown, f"{where}: labels {unknown} on no metric of {expr!r}"
    assert checked >= 30


def test_a_misspelt_metric_would_be_caught(live_metrics: tuple[Exposed, Exposed]) -> None:
    """The control: suffixes follow the family's type (a counter has no bare name, a gauge no
    ``_count``), and a name the processes do not expose is missing."""
    api, runner = live_metrics
    both = {**runner, **api}
    assert "streamward_runner_takeovers_total" in both
    assert "streamward_runner_takeovers" not in both  # counters are queried as _total
    assert "streamward_work_backlog_count" not in both
    assert "streamward_api_invoke_duration_seconds" not in both  # histograms: _bucket etc.
    assert "streamward_runner_heartbeat_age_seconds" not in both


def test_the_dashboard_covers_the_fleet() -> None:
    """Each subject of the dashboard has a panel reading its metric."""
    names = {n for _, e in dashboard_exprs() for n in promql_metric_names(e)}
    for subject in [
        "streamward_replicas",  # replicas
        "streamward_runner_sessions",  # leases
        "streamward_runner_heartbeat_last_success_timestamp_seconds",  # heartbeat age
        "streamward_runner_takeovers_total",  # takeovers
        "streamward_runner_leases_lost_total",  # stale writes refused
        "streamward_api_invoke_duration_seconds_bucket",  # invoke latency
        "streamward_work_backlog",  # work backlog
        "streamward_api_ingest_entries_total",  # ingest rate
        "streamward_redis_script_duration_seconds_count",  # Redis errors
    ]:
        assert subject in names, subject
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:  # no two panels on the same grid cell
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"  # no hard-coded data source


# -- alert rules -------------------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (not ``#`` lines in code)."""
    out = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def test_every_alert_has_a_runbook_that_exists() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    assert "alerts" in anchors and "streamward-noreadyrunners" not in anchors  # the control
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 10
    for r in alerts:
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        url = r["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        anchor = url.removeprefix(RUNBOOK_BASE)
        assert anchor == r["alert"].lower(), url  # one section per alert, named after it
        assert anchor in anchors, f"{r['alert']}: docs/operations.md has no section #{anchor}"
    assert len({r["alert"] for r in alerts}) == len(alerts)


def test_the_prometheusrule_carries_the_rules_file() -> None:
    """The operator's PrometheusRule (components/monitoring) and the plain rules file are the
    same groups, so neither drifts."""
    docs = render(MONITORING.parent.parent / "overlays" / "prod")
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            # `for` and durations are Prometheus durations; expr is one string
            assert isinstance(r["expr"], str)
            assert re.fullmatch(r"\d+[smhd]", r.get("for", "1m")), r
