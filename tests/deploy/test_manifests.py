"""deploy/: every overlay renders, validates against the Kubernetes schemas offline, and its
cross-references hold (probes, commands, env vars, grace periods, selectors, secrets)."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer
import yaml

from streamward.api.config import Settings
from streamward.lua.keys import Keys
from streamward.runner.config import RunnerSettings
from streamward.tools.cli import app as cli_app
from tests.api.conftest import asgi_client, running_app
from tests.deploy.kustomize import Doc, render, split_image, strategic_merge

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# what gets rendered: every overlay, and the "ship your handler" example built on prod
TREES = {p.name: p for p in (K8S / "overlays").iterdir() if p.is_dir()} | {
    "example-handler": ROOT / "deploy" / "examples" / "handler" / "k8s"
}
OVERLAYS = sorted(TREES)
# Kubernetes versions the manifests must be valid for (oldest supported, newest bundled)
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# CRDs: no bundled schema. Their structure is checked by the tests below instead.
CRDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
# Secrets the prod overlay expects to exist (created out of band), by name → keys
PROD_SECRETS = {
    "streamward-admin": {"token"},
    "streamward-api-tokens": {"tokens", "scoped"},
    "streamward-redis": {"url", "password", "address"},
    "streamward-database": {"url"},
}
# what the archiver (components/record) needs beyond its shutdown: its current transaction
ARCHIVER_SHUTDOWN_S = 10
API_SHUTDOWN_S = 5  # uvicorn timeout_graceful_shutdown in streamward.api.main.serve
INTERRUPT_WAIT_S = 5  # streamward.runner.replica.INTERRUPT_WAIT_S: drain-timeout interruptions
STATUS_OK = 0


def _rendered(overlay: str) -> list[Doc]:
    return render(TREES[overlay])


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    name = str(request.param)
    return name, _rendered(name)


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(d: Doc) -> Doc:
    spec: Doc = d["spec"]["template"]["spec"]
    return spec


def containers(d: Doc) -> Iterator[Doc]:
    yield from pod_spec(d).get("containers", [])


def streamward_deployments(docs: list[Doc]) -> list[Doc]:
    return [
        d
        for d in by_kind(docs, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/name") == "streamward"
    ]


def component(d: Doc) -> str:
    """api, runner (every runner Deployment, one per session type), archiver, ..."""
    if d["spec"]["template"]["metadata"]["labels"].get("streamward.io/role") == "runner":
        return "runner"
    return str(d["metadata"]["labels"]["app.kubernetes.io/component"])


def env_value(c: Doc, name: str) -> str | None:
    for e in c.get("env", []):
        if e["name"] == name:
            return None if "valueFrom" in e else str(e["value"])
    return None


def pre_stop_s(c: Doc) -> float:
    hook = c.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    cmd = hook["exec"]["command"]
    assert cmd[0] == "sleep" and len(cmd) == 2, f"preStop must be a plain sleep: {cmd}"
    return float(cmd[1])


# -- rendering and schemas --------------------------------------------------------------------


def test_every_overlay_renders_the_whole_system(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Deployment", "streamward-api"),
        ("HorizontalPodAutoscaler", "streamward-api"),
        ("Deployment", "streamward-runner"),
        ("Service", "streamward-api"),
        ("Service", "streamward-runner-metrics"),
        ("PodDisruptionBudget", "streamward-runner"),
        ("PodDisruptionBudget", "streamward-api"),
        ("NetworkPolicy", "streamward-runner"),
        ("ConfigMap", "streamward-config"),
    ]:
        assert expected in kinds, f"{name}: {expected} missing"
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    for d in docs:  # every object of the base carries the kustomization's label
        labels = d["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/name") == "streamward":
            assert labels["app.kubernetes.io/part-of"] == "streamward", d["metadata"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schema(
    overlay: tuple[str, list[Doc]], version: str
) -> None:
    name, docs = overlay
    checked = 0
    for d in docs:
        if (d["apiVersion"], d["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {d['kind']}/{d['metadata']['name']} (k8s {version}): {exc}")
        checked += 1
    assert checked >= 10


def test_the_validator_rejects_a_broken_object() -> None:
    """The control: a typo in a field the schema knows is refused (strict mode)."""
    d = one(_rendered("dev"), "Deployment", "streamward-runner")
    d["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(d, K8S_VERSIONS[0], strict=True)


def test_only_the_allow_listed_crds_skip_the_schema(overlay: tuple[str, list[Doc]]) -> None:
    """Everything else is a built-in group (core ``v1``, ``apps``, ``policy``, ``*.k8s.io``)."""
    _, docs = overlay
    for d in docs:
        if (d["apiVersion"], d["kind"]) in CRDS:
            continue
        group = d["apiVersion"].rpartition("/")[0]
        assert "." not in group or group.endswith(".k8s.io"), (
            f"{d['apiVersion']} {d['kind']} looks like a CRD: add it to CRDS and check it here"
        )


# -- the renderer agrees with kustomize where kustomize exists --------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_renderer_matches_kubectl_kustomize_when_available(name: str) -> None:
    tool = shutil.which("kustomize")
    cmd = [tool, "build"] if tool else None
    if cmd is None and shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize"]
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl is installed (CI renders with tests/deploy)")
    out = subprocess.run(
        [*cmd, str(TREES[name])], capture_output=True, text=True, check=True
    ).stdout
    theirs = sorted(
        (d for d in yaml.safe_load_all(out) if d), key=lambda d: (d["kind"], d["metadata"]["name"])
    )
    ours = sorted(_rendered(name), key=lambda d: (d["kind"], d["metadata"]["name"]))
    assert ours == theirs


def test_strategic_merge_uses_kubernetes_merge_keys() -> None:
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["x"]}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["y"]}]}
    merged = strategic_merge(base, patch)
    assert merged["containers"][0]["env"] == [  # new items first, as kustomize does
        {"name": "Y", "value": "2"},
        {"name": "X", "value": "1"},
    ]
    assert merged["containers"][0]["args"] == ["y"]  # plain lists are replaced
    assert split_image("reg:5000/team/app:1.2@sha256:ab") == (
        "reg:5000/team/app",
        "1.2",
        "sha256:ab",
    )


# -- cross-references -------------------------------------------------------------------------


def test_grace_periods_cover_prestop_and_drain(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for d in streamward_deployments(docs):
        grace = pod_spec(d)["terminationGracePeriodSeconds"]
        for c in containers(d):
            if component(d) == "runner":
                drain = env_value(c, "STREAMWARD_DRAIN_TIMEOUT_S")
                drain_s = float(drain) if drain else RunnerSettings(replica_id="x").drain_timeout_s
                needed = pre_stop_s(c) + drain_s + INTERRUPT_WAIT_S
            elif component(d) == "archiver":
                needed = pre_stop_s(c) + ARCHIVER_SHUTDOWN_S
            else:
                needed = pre_stop_s(c) + API_SHUTDOWN_S
            assert grace > needed, (
                f"{d['metadata']['name']}: terminationGracePeriodSeconds {grace} must exceed "
                f"preStop + drain/shutdown ({needed} s)"
            )


def test_the_interrupt_wait_used_above_is_the_runners() -> None:
    from streamward.runner import replica

    assert replica.INTERRUPT_WAIT_S == INTERRUPT_WAIT_S


@functools.cache
def get_status(path: str) -> int:
    """Status of ``GET path`` on the real app (lifespan run, Redis unreachable): a probe path
    that does not exist answers 404 / 405."""

    async def get() -> int:
        settings = Settings(redis_url="redis://127.0.0.1:1/0")
        async with running_app(settings) as app, asgi_client(app) as client:
            return (await client.get(path)).status_code

    return asyncio.run(get())


def _cli_command(argv: list[str]) -> Any:
    """The command ``streamward <argv...>`` resolves to in the typer app (fails if none)."""
    assert argv[0] == "streamward"
    cmd: Any = typer.main.get_command(cli_app)
    ctx = typer.Context(cmd)
    for word in argv[1:]:
        if word.startswith("-"):
            break
        assert isinstance(cmd, typer.core.TyperGroup), f"{argv}: {cmd.name} has no subcommands"
        sub = cmd.get_command(ctx, word)
        assert sub is not None, f"{' '.join(argv)}: no command {word!r} under {cmd.name}"
        cmd = sub
    return cmd


def test_probe_checks_can_fail() -> None:
    """The controls: an endpoint or a command that does not exist is caught."""
    assert get_status("/healthz-that-does-not-exist") == 404
    assert get_status("/livez") == 200 and get_status("/readyz") == 503  # no Redis here
    with pytest.raises(AssertionError, match="no command 'chek'"):
        _cli_command(["streamward", "runner", "chek"])


def test_probes_point_at_real_endpoints_and_commands(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for d in streamward_deployments(docs):
        for c in containers(d):
            named_ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(kind)
                assert probe is not None, f"{d['metadata']['name']}: no {kind}"
                if "httpGet" in probe:
                    assert get_status(probe["httpGet"]["path"]) not in (404, 405), probe
                    port = probe["httpGet"]["port"]
                    assert port in named_ports or port in named_ports.values(), probe
                else:
                    _cli_command(probe["exec"]["command"])
            if component(d) == "api":
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
            elif component(d) == "archiver":  # its own metrics listener (--metrics-port)
                port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
                assert c["args"][c["args"].index("--metrics-port") + 1] == str(port)
                assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
            else:
                for kind in ("startupProbe", "livenessProbe"):
                    assert c[kind]["exec"]["command"] == ["streamward", "runner", "check"]
            # the container's own command is a real CLI command too
            _cli_command(["streamward", *c["args"]])


def test_runner_liveness_command_needs_no_redis(
    overlay: tuple[str, list[Doc]], tmp_path: Path
) -> None:
    """Run the probe's command with the pod's environment and no Redis anywhere: it answers
    from the heartbeat file alone (0 fresh, 1 stale or missing)."""
    _, docs = overlay
    runner = one(docs, "Deployment", "streamward-runner")
    c = next(containers(runner))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMWARD_")}
    for e in c["env"]:
        env[e["name"]] = e.get("value", "unused")
    env.update({"POD_NAME": "streamward-runner-abc12", "TMPDIR": str(tmp_path)})
    env["STREAMWARD_REPLICA_ID"] = env["POD_NAME"]
    env["STREAMWARD_REDIS_URL"] = "redis://127.0.0.1:1/0"  # unreachable: must not matter
    argv = c["livenessProbe"]["exec"]["command"]
    exe = str(Path(sys.executable).parent / argv[0])  # this virtualenv's console script
    heartbeat = tmp_path / f"streamward-runner-{env['POD_NAME']}.heartbeat"

    def run() -> int:
        return subprocess.run([exe, *argv[1:]], env=env, capture_output=True, timeout=30).returncode

    assert run() == 1  # no heartbeat yet
    heartbeat.touch()
    assert run() == STATUS_OK
    old = time.time() - 3600
    os.utime(heartbeat, (old, old))
    assert run() == 1


def _settings_fields(cls: type[Any]) -> set[str]:
    return {f"STREAMWARD_{n.upper()}" for n in cls.model_fields}


def test_env_vars_are_settings_fields(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    api_vars, runner_vars = _settings_fields(Settings), _settings_fields(RunnerSettings)
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    for d in streamward_deployments(docs):
        # the archiver reads the API's settings (streamward.api.config)
        known = api_vars if component(d) in ("api", "archiver") else runner_vars
        for c in containers(d):
            for e in c.get("env", []):
                if e["name"] == "POD_NAME":
                    assert component(d) == "runner"  # the runner's default replica id
                    continue
                assert e["name"] in known, f"{name} {component(d)}: {e['name']} is no setting"
            for src in c.get("envFrom", []):
                cm = configmaps[src["configMapRef"]["name"]]
                for var in cm["data"]:
                    assert var in api_vars | runner_vars, f"{name}: {var} is no setting"


def test_settings_in_the_manifests_are_valid(overlay: tuple[str, list[Doc]]) -> None:
    """The literal values parse: build each component's settings from them."""
    _, docs = overlay
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    for d in streamward_deployments(docs):
        for c in containers(d):
            values: dict[str, Any] = {}
            for src in c.get("envFrom", []):
                values.update(configmaps[src["configMapRef"]["name"]]["data"])
            for e in c.get("env", []):
                if "value" in e:
                    values[e["name"]] = e["value"]
            fields = {k.removeprefix("STREAMWARD_").lower(): v for k, v in values.items()}
            fields.pop("pod_name", None)
            cls: Any = Settings if component(d) in ("api", "archiver") else RunnerSettings
            known = {k: v for k, v in fields.items() if k in cls.model_fields}
            if cls is RunnerSettings:
                known.setdefault("replica_id", "streamward-runner-abc12")
            cls(**known)


def test_runner_replica_id_is_the_pod_name(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    c = next(containers(one(docs, "Deployment", "streamward-runner")))
    refs = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}) for e in c["env"]}
    assert refs["POD_NAME"] == {"fieldPath": "metadata.name"}
    assert refs["STREAMWARD_REPLICA_ID"] == {"fieldPath": "metadata.name"}


def _secret_refs(docs: list[Doc]) -> set[tuple[str, str]]:
    refs = set()
    for d in streamward_deployments(docs):
        for c in containers(d):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
    for t in by_kind(docs, "TriggerAuthentication"):
        for ref in t["spec"].get("secretTargetRef", []):
            refs.add((ref["name"], ref["key"]))
    return refs


def test_secrets_exist_in_dev_and_are_never_committed_for_prod() -> None:
    dev = _rendered("dev")
    dev_secrets = {d["metadata"]["name"]: d for d in by_kind(dev, "Secret")}
    for name, key in _secret_refs(dev):
        assert name in dev_secrets and key in dev_secrets[name]["stringData"], (name, key)
    prod = _rendered("prod")
    assert by_kind(prod, "Secret") == []  # nothing secret is committed
    refs = _secret_refs(prod)
    assert {n for n, _ in refs} == set(PROD_SECRETS)
    for name, key in refs:
        assert key in PROD_SECRETS[name], (name, key)
    documented = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    for name, keys in PROD_SECRETS.items():
        assert name in documented and all(re.search(rf"\b{k}\b", documented) for k in keys)
    # prod reads the Redis URL and password from the Secret, not from the ConfigMap
    for d in streamward_deployments(prod):
        c = next(containers(d))
        sources = {e["name"]: e.get("valueFrom", {}) for e in c["env"]}
        assert sources["STREAMWARD_REDIS_URL"]["secretKeyRef"]["name"] == "streamward-redis"
        assert sources["STREAMWARD_REDIS_PASSWORD"]["secretKeyRef"]["key"] == "password"


def test_selectors_ports_and_references_resolve(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    pods = [
        (d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"], pod_spec(d))
        for d in by_kind(docs, "Deployment") + by_kind(docs, "Job")
    ]

    def matching(selector: dict[str, str]) -> list[tuple[str, dict[str, str], Doc]]:
        return [p for p in pods if selector.items() <= p[1].items()]

    for d in by_kind(docs, "Deployment"):
        assert (
            d["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        )
        for tsc in pod_spec(d).get("topologySpreadConstraints", []):
            assert matching(tsc["labelSelector"]["matchLabels"]) == [
                p for p in pods if p[0] == d["metadata"]["name"]
            ]
        for src in (c for c in pod_spec(d)["containers"] for c in c.get("envFrom", [])):
            one(docs, "ConfigMap", src["configMapRef"]["name"])
        sa = pod_spec(d).get("serviceAccountName")
        if sa:
            one(docs, "ServiceAccount", sa)
    for svc in by_kind(docs, "Service"):
        targets = matching(svc["spec"]["selector"])
        assert targets, f"{name}: Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            for _, _, spec in targets:
                names = {p.get("name") for c in spec["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, (svc["metadata"]["name"], port)
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        assert matching(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]
    for np in by_kind(docs, "NetworkPolicy"):
        assert matching(np["spec"]["podSelector"]["matchLabels"]), np["metadata"]["name"]
    # the runners reach the API through the Service named in STREAMWARD_API_URL
    api_url = one(docs, "ConfigMap", "streamward-config")["data"]["STREAMWARD_API_URL"]
    host, _, port = api_url.removeprefix("http://").partition(":")
    api_svc = one(docs, "Service", host)
    assert int(port or 80) in {p["port"] for p in api_svc["spec"]["ports"]}


def test_the_api_is_closed_by_default(overlay: tuple[str, list[Doc]]) -> None:
    """Tokens from a Secret (the API refuses a public bind without them), /v1 only from
    labelled namespaces or pods, the admin listener only from runners and monitoring, the
    runners' metrics only from monitoring, and the runners ship to the admin listener."""
    from streamward.api.serving import auth_refusal
    from streamward.api.tokens import TOKEN_LIST

    name, docs = overlay
    api = next(containers(one(docs, "Deployment", "streamward-api")))
    sources = {e["name"]: e.get("valueFrom", {}) for e in api["env"]}
    assert sources["STREAMWARD_API_TOKENS"]["secretKeyRef"] == {
        "name": "streamward-api-tokens",
        "key": "tokens",
        "optional": True,
    }
    # scoped (hashed) tokens from the same Secret; either key may be absent, not both
    assert sources["STREAMWARD_TOKENS"]["secretKeyRef"] == {
        "name": "streamward-api-tokens",
        "key": "scoped",
        "optional": True,
    }
    host = api["args"][api["args"].index("--host") + 1]
    assert auth_refusal(Settings(host=host)) is not None  # so the Secret is what opens it
    assert auth_refusal(Settings(host=host, api_tokens={"t": "p"})) is None
    if name == "dev":  # the committed dev Secret's scoped tokens are valid settings
        dev = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
        scoped = dev["streamward-api-tokens"]["stringData"]["scoped"]
        assert auth_refusal(Settings(host=host, tokens=TOKEN_LIST.validate_json(scoped))) is None
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert api["args"][api["args"].index("--admin-port") + 1] == str(ports["admin"])
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[kind]["httpGet"]["port"] == "admin"  # not behind the public flood

    def rules(name: str) -> dict[int, list[Doc]]:
        np = one(docs, "NetworkPolicy", name)
        out: dict[int, list[Doc]] = {}
        for rule in np["spec"]["ingress"]:
            assert rule.get("from"), f"{name}: a rule admits everyone"
            for port in rule["ports"]:
                out.setdefault(port["port"], []).extend(rule["from"])
        return out

    api_in = rules("streamward-api")
    access = {"streamward.io/api-access": "true"}
    assert api_in[ports["http"]] == [
        {"namespaceSelector": {"matchLabels": access}},
        {"podSelector": {"matchLabels": access}},
    ]
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    runner_pods = {  # every runner Deployment's pods (one per session type)
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "streamward", "streamward.io/role": "runner"}
        }
    }
    # the second: runner pods from before the role label, while a rollout replaces them
    legacy_runner_pods = {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/name": "streamward",
                "app.kubernetes.io/component": "runner",
            }
        }
    }
    assert api_in[ports["admin"]] == [runner_pods, legacy_runner_pods, monitoring]
    assert set(api_in) == {ports["http"], ports["admin"]}
    assert rules("streamward-runner") == {9100: [monitoring]}
    api_url = one(docs, "ConfigMap", "streamward-config")["data"]["STREAMWARD_API_URL"]
    svc = one(docs, "Service", "streamward-api")
    [target] = [p["targetPort"] for p in svc["spec"]["ports"] if api_url.endswith(f":{p['port']}")]
    assert target == "admin"


def test_pods_are_hardened_and_sized(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    uid = _dockerfile_uid()
    for d in by_kind(docs, "Deployment"):
        spec = pod_spec(d)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec.get("automountServiceAccountToken") is False
        for c in spec["containers"]:
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"], c
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
    for d in streamward_deployments(docs):
        assert pod_spec(d)["securityContext"]["runAsUser"] == uid  # the image's own user
        assert len(pod_spec(d)["topologySpreadConstraints"]) >= 1
        image = next(containers(d))["image"]
        repo, tag, digest = split_image(image)
        assert repo != "streamward" and (tag or digest), f"{name}: unpinned image {image}"
        if name != "dev":
            assert tag not in ("latest", "dev"), image


def test_servicemonitor_scrapes_real_metrics_endpoints(overlay: tuple[str, list[Doc]]) -> None:
    """Where the monitoring component is included (prod): the dev overlay needs no
    Prometheus operator, so it has no ServiceMonitor and no PrometheusRule."""
    name, docs = overlay
    if name == "dev":
        assert by_kind(docs, "ServiceMonitor") == by_kind(docs, "PrometheusRule") == []
        return
    sm = one(docs, "ServiceMonitor", "streamward")
    selected = [
        s
        for s in by_kind(docs, "Service")
        if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert {s["metadata"]["name"] for s in selected} == {
        "streamward-api",
        "streamward-runner-metrics",
    }
    ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in ports and ep["path"] == "/metrics"
    assert get_status("/metrics") == 200
    runner = next(containers(one(docs, "Deployment", "streamward-runner")))
    metrics_port = env_value(runner, "STREAMWARD_METRICS_PORT")
    assert metrics_port is not None
    assert {p["containerPort"] for p in runner["ports"] if p["name"] == "metrics"} == {
        int(metrics_port)
    }


def test_keda_scales_the_runner_on_the_work_stream() -> None:
    docs = _rendered("prod")
    so = one(docs, "ScaledObject", "streamward-runner")
    target = so["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "streamward-runner")
    one(docs, "Deployment", target["name"])
    keys = Keys(one(docs, "ConfigMap", "streamward-config")["data"]["STREAMWARD_KEY_PREFIX"])
    streams = [t for t in so["spec"]["triggers"] if t["type"] == "redis-streams"]
    assert len(streams) == 1
    meta = streams[0]["metadata"]
    assert (meta["stream"], meta["consumerGroup"]) == (keys.work, keys.work_group)
    assert int(meta["lagCount"]) > 0
    auth = one(docs, "TriggerAuthentication", streams[0]["authenticationRef"]["name"])
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"address", "password"}
    prom = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
    assert prom and "streamward_runner_sessions" in prom[0]["metadata"]["query"]
    assert f'namespace="{so["metadata"]["namespace"]}"' in prom[0]["metadata"]["query"]
    assert so["spec"]["minReplicaCount"] >= 2
    assert by_kind(_rendered("dev"), "ScaledObject") == []  # optional: only where included


def test_dev_overlay_brings_its_own_redis() -> None:
    docs = _rendered("dev")
    redis_svc = one(docs, "Service", "streamward-redis")
    url = one(docs, "ConfigMap", "streamward-config")["data"]["STREAMWARD_REDIS_URL"]
    assert (
        url == f"redis://{redis_svc['metadata']['name']}:{redis_svc['spec']['ports'][0]['port']}/0"
    )
    redis_pod = one(docs, "Deployment", "streamward-redis")
    args = next(containers(redis_pod))["args"]
    assert args[args.index("--appendonly") + 1] == "yes"


# -- the Dockerfile -----------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerfile_uid() -> int:
    users = [rest for word, rest in _dockerfile() if word == "USER"]
    assert users, "the image must set USER"
    return int(users[-1].split(":")[0])


def test_dockerfile_runs_streamward_as_pid1_non_root_without_secrets() -> None:
    import json
    import tomllib

    instructions = _dockerfile()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert all(b == "${PYTHON_IMAGE}" for b in bases) and args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert _dockerfile_uid() >= 10000  # numeric, non-root
    entry = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert len(entry) == 1
    argv = json.loads(entry[0])  # exec form: a JSON array, no shell in front of PID 1
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv == ["streamward"] and "streamward" in scripts
    cmd = json.loads(next(rest for word, rest in instructions if word == "CMD"))
    _cli_command(["streamward", *cmd])
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "[dev]" not in runs and ".[dev" not in runs  # no dev extra in the image
    for word, rest in instructions:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(?i)token|password|secret|_key\b", rest), rest
    # every COPY source exists and passes the .dockerignore
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), src
                assert f"!{src.rstrip('/')}" in {i.rstrip("/") for i in ignore}, src


def test_redis_configs_start_a_real_server(tmp_path: Path) -> None:
    """deploy/redis/*.conf are valid for the redis-server the tests use."""
    import redis

    from streamward.tools.server import RedisServer
    from streamward.tools.topology import free_cluster_port

    # RedisServer adds --port/--bind/--dir/--save/--appendonly after the file (they win)
    conf = str(ROOT / "deploy" / "redis" / "standalone.conf")
    with RedisServer(config_file=conf, appendonly=True) as s:
        c = redis.Redis(port=s.port, decode_responses=True)
        assert c.config_get("appendonly")["appendonly"] == "yes"
        assert c.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        c.close()
    node = RedisServer(  # the cluster bus port (port + 10000) must exist too
        free_cluster_port(), config_file=str(ROOT / "deploy" / "redis" / "cluster-node.conf")
    )
    with node:
        c = redis.Redis(port=node.port, decode_responses=True)
        assert c.info("cluster")["cluster_enabled"] == 1
        c.close()
    with RedisServer() as master:
        copy = tmp_path / "sentinel.conf"  # Sentinel rewrites its file: use a copy
        text = (ROOT / "deploy" / "redis" / "sentinel.conf").read_text()
        copy.write_text(
            re.sub(r"(sentinel monitor streamward 127\.0\.0\.1) \d+", rf"\1 {master.port}", text)
        )
        sentinel = RedisServer(extra_args=["--sentinel"], config_file=str(copy))
        with sentinel:
            c = redis.Redis(port=sentinel.port, decode_responses=True)
            assert c.sentinel_get_master_addr_by_name("streamward") == ("127.0.0.1", master.port)
            c.close()


def test_every_manifest_file_is_used() -> None:
    """No stray manifest: every YAML under deploy/k8s is a kustomization or referenced."""
    referenced: set[Path] = set()
    for k in K8S.rglob("kustomization.yaml"):
        doc = yaml.safe_load(k.read_text())
        referenced.add(k)
        for key in ("resources", "components"):
            for r in doc.get(key, []):
                referenced.add((k.parent / r).resolve())
        for p in doc.get("patches", []):
            if "path" in p:
                referenced.add((k.parent / p["path"]).resolve())
    for f in K8S.rglob("*.yaml"):
        assert f.resolve() in referenced or f.resolve().parent in referenced, f
