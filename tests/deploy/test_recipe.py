"""The deploy recipe (docs/operations.md, "Ship your handler"): the handler example's image
and overlay, one runner Deployment per session type, the API's HPA, the KEDA component's
Prometheus parameter, the optional monitoring component, and the build-context ignore files."""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from streamward.client import StreamwardClient
from streamward.runner.handlers import load_handlers
from streamward.tools.fleet import Fleet
from tests.deploy.kustomize import Doc, KustomizeError, render, split_image
from tests.deploy.test_manifests import (
    OVERLAYS,
    TREES,
    _dockerfile_uid,
    _rendered,
    by_kind,
    component,
    containers,
    env_value,
    one,
    pod_spec,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
EXAMPLE = ROOT / "deploy" / "examples" / "handler"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return str(request.param), _rendered(str(request.param))


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# -- one runner Deployment per session type ----------------------------------------------------


def test_no_two_deployments_select_each_others_pods(overlay: tuple[str, list[Doc]]) -> None:
    """Overlapping selectors make controllers fight over pods: each runner Deployment (one
    per session type) selects only its own pods, and each has its own PodDisruptionBudget."""
    name, docs = overlay
    deployments = by_kind(docs, "Deployment")
    for d in deployments:
        for other in deployments:
            if other is not d:
                assert not _selects(
                    d["spec"]["selector"]["matchLabels"],
                    other["spec"]["template"]["metadata"]["labels"],
                ), f"{name}: {d['metadata']['name']} selects {other['metadata']['name']}'s pods"
        if component(d) in ("api", "runner"):
            pdbs = [
                p
                for p in by_kind(docs, "PodDisruptionBudget")
                if _selects(
                    p["spec"]["selector"]["matchLabels"],
                    d["spec"]["template"]["metadata"]["labels"],
                )
            ]
            assert len(pdbs) == 1, f"{name}: {d['metadata']['name']} has {len(pdbs)} PDBs"


def test_every_runner_deployment_is_reached_scraped_and_fenced_in(
    overlay: tuple[str, list[Doc]],
) -> None:
    """A runner Deployment added for a session type is covered by the runners'
    NetworkPolicy, may ship to the API's admin listener, and is scraped."""
    name, docs = overlay
    runners = [d for d in by_kind(docs, "Deployment") if component(d) == "runner"]
    assert runners
    api_policy = one(docs, "NetworkPolicy", "streamward-api")
    admin_from = [
        peer["podSelector"]["matchLabels"]
        for rule in api_policy["spec"]["ingress"]
        for peer in rule["from"]
        if "podSelector" in peer and any(p["port"] == 8701 for p in rule["ports"])
    ]
    policy = one(docs, "NetworkPolicy", "streamward-runner")["spec"]["podSelector"]["matchLabels"]
    metrics = one(docs, "Service", "streamward-runner-metrics")["spec"]["selector"]
    for d in runners:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert _selects(policy, labels) and _selects(metrics, labels), d["metadata"]["name"]
        assert any(_selects(sel, labels) for sel in admin_from), d["metadata"]["name"]
    types = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"].get("streamward.io/type")
        for d in runners
    }
    if name == "example-handler":
        assert types["streamward-runner-greeter"] == "greeter"


def test_the_example_handler_image_and_overlay() -> None:
    """The example Dockerfile builds FROM the image the overlays deploy, keeps its user,
    copies what exists and passes its .dockerignore; the Deployment's handler loads from the
    copied code and serves the type its pods are labelled with."""
    lines = [
        line.strip()
        for line in re.sub(r"\\\n", " ", (EXAMPLE / "Dockerfile").read_text()).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    words = [(line.split()[0].upper(), line.split(" ", 1)[1].strip()) for line in lines]
    base_k = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    [image] = [i for i in base_k["images"] if i["name"] == "streamward"]
    [base_ref] = [rest for word, rest in words if word == "FROM"]
    assert base_ref == f"{image['newName']}:{image['newTag']}"
    users = [rest for word, rest in words if word == "USER"]
    assert users[-1] == f"{_dockerfile_uid()}:{_dockerfile_uid()}"  # back to non-root
    allowed = [p for p in (EXAMPLE / ".dockerignore").read_text().split() if p.startswith("!")]
    for word, rest in words:
        if word == "COPY":
            for src in rest.split()[:-1]:
                assert (EXAMPLE / src).exists(), src
                assert f"!{src.rstrip('/')}" in {a.rstrip("/") for a in allowed}, src
    env = dict(rest.split("=", 1) for word, rest in words if word == "ENV")
    code_dir = env["PYTHONPATH"]
    assert any(rest.split()[-1] == f"{code_dir}/myagents" for w, rest in words if w == "COPY")

    docs = _rendered("example-handler")
    d = one(docs, "Deployment", "streamward-runner-greeter")
    c = next(containers(d))
    assert split_image(c["image"])[0] == "registry.example/myagents"  # set by `images`
    spec = env_value(c, "STREAMWARD_HANDLER")
    assert spec is not None
    sys.path.insert(0, str(EXAMPLE))  # what PYTHONPATH=/app is in the image
    try:
        handlers = load_handlers(spec)
    finally:
        sys.path.remove(str(EXAMPLE))
    assert set(handlers) == {d["spec"]["template"]["metadata"]["labels"]["streamward.io/type"]}
    assert pod_spec(d)["securityContext"]["runAsUser"] == _dockerfile_uid()
    # the rest of the fleet is the prod overlay's, unchanged
    assert one(docs, "Deployment", "streamward-runner")
    api = next(containers(one(docs, "Deployment", "streamward-api")))
    assert split_image(api["image"])[0] == image["newName"]


def test_the_example_handler_serves_its_type_in_a_real_runner(fleet: Fleet) -> None:
    """The recipe end to end, without Docker: a real runner with the example Deployment's
    STREAMWARD_HANDLER and the image's PYTHONPATH serves an invoke of type greeter."""
    c = next(
        containers(one(_rendered("example-handler"), "Deployment", "streamward-runner-greeter"))
    )
    spec = env_value(c, "STREAMWARD_HANDLER")
    assert spec is not None
    api = fleet.start_api()
    fleet.start_runner("greeter-r1", env={"STREAMWARD_HANDLER": spec, "PYTHONPATH": str(EXAMPLE)})
    resp = httpx.post(
        f"{api.url}/v1/sessions/greet-1/invoke",
        json={"input": {"name": "ada"}, "type": "greeter", "mode": "detached"},
        timeout=30.0,
    )
    assert resp.status_code == 202, resp.text
    with StreamwardClient(api.url) as client:
        entries = list(client.stream("greet-1", run_id=resp.json()["run_id"]))
    assert entries[-1].type == "run.completed"
    outputs = [e.data for e in entries if e.type == "run.output"]
    assert outputs == [{"greeting": "hello ada", "seen": 1}]


# -- the API's HPA -----------------------------------------------------------------------------


def test_the_api_scales_with_an_hpa(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    hpa = one(docs, "HorizontalPodAutoscaler", "streamward-api")
    ref = hpa["spec"]["scaleTargetRef"]
    target = one(docs, ref["kind"], ref["name"])
    assert ref["apiVersion"] == target["apiVersion"] and component(target) == "api"
    # the HPA owns the count: a `replicas` here would reset it on every apply
    assert "replicas" not in target["spec"]
    # Utilization is a share of the requests: the container must request CPU
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert all("cpu" in c["resources"]["requests"] for c in containers(target))
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "streamward-api")
    if name != "dev":  # a drain can always take one API pod
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    # scale down one pod at a time: each removal cuts that pod's streams (clients resume)
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 60}
    ]


# -- KEDA's Prometheus address is a parameter --------------------------------------------------


def test_keda_prometheus_address_comes_from_the_overlay(tmp_path: Path) -> None:
    docs = _rendered("prod")
    params = yaml.safe_load((TREES["prod"] / "keda-params.yaml").read_text())
    so = one(docs, "ScaledObject", "streamward-runner")
    [prom] = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
    assert prom["metadata"]["serverAddress"] == params["data"]["prometheusAddress"]
    assert prom["metadata"]["serverAddress"].startswith("http")
    # a build-time parameter: not applied to the cluster
    assert not [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "streamward-keda-params"
    ]

    def overlay_with(params_doc: Doc | None) -> list[Doc]:
        resources = [str(K8S / "base")]
        if params_doc is not None:
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_doc))
            resources.append("params.yaml")
        (tmp_path / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": resources,
                    "components": [str(K8S / "components" / "keda")],
                }
            )
        )
        return render(tmp_path)

    params["data"]["prometheusAddress"] = "http://thanos-query.observability.svc:9090"
    mine = one(overlay_with(params), "ScaledObject", "streamward-runner")
    assert "http://thanos-query.observability.svc:9090" in json.dumps(mine["spec"]["triggers"])
    with pytest.raises(KustomizeError, match="streamward-keda-params"):
        overlay_with(None)  # the parameter is required: no silent default


# -- monitoring is optional --------------------------------------------------------------------


def test_monitoring_is_an_optional_component(tmp_path: Path) -> None:
    monitoring = K8S / "components" / "monitoring"
    k = yaml.safe_load((monitoring / "kustomization.yaml").read_text())
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    crd_group = "monitoring.coreos.com/"
    assert not [d for d in _rendered("dev") if d["apiVersion"].startswith(crd_group)]
    assert not [d for d in render(K8S / "base") if d["apiVersion"].startswith(crd_group)]
    # dev plus the component: the operator's objects appear, nothing else changes
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(TREES["dev"])],
                "components": [str(monitoring)],
            }
        )
    )
    with_monitoring = render(tmp_path)
    added = [d for d in with_monitoring if d["apiVersion"].startswith(crd_group)]
    assert sorted(d["kind"] for d in added) == ["PrometheusRule", "ServiceMonitor"]
    assert [d for d in with_monitoring if d not in added] == _rendered("dev")


# -- build contexts ----------------------------------------------------------------------------


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule for ``path`` (the last matching pattern wins; a pattern
    that matches a parent directory matches what is in it)."""
    out = False
    parts = path.split("/")
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw.removeprefix("!").rstrip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pat) or (
                pat.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pat[3:])
            ):
                out = not neg
                break
    return out


def _patterns(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_root_dockerignore_matches_buildkits_and_keeps_the_venv_out() -> None:
    """The legacy builder reads only /.dockerignore, BuildKit deploy/Dockerfile.dockerignore:
    the same file, so neither sends the virtualenv, .git or caches as build context."""
    root = (ROOT / ".dockerignore").read_text()
    assert root == (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    patterns = _patterns(ROOT / ".dockerignore")
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "streamward.egg-info/PKG-INFO",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        "tests/conftest.py",
        "docs/api.md",
        "api/streamward/api/__pycache__/main.cpython-311.pyc",
        "api/.venv/lib/x.py",
        "runner/streamward/runner/.pytest_cache/v",
    ]:
        assert _ignored(patterns, path), path
    for path in ["pyproject.toml", "README.md", "api/streamward/api/main.py", "lua/streamward/lua"]:
        assert not _ignored(patterns, path), path
    assert _ignored(["*", "!a/"], "b/c") and not _ignored(["*", "!a/"], "a/c")  # the control
