"""The house rules, checked on the source: rooms, the direction of imports, module size,
and the module table of docs/architecture.md.

Rooms (docs/architecture.md, "Rooms"), lowest first::

    streamward.lua                      Redis layer
    streamward.core                     shared pieces
    streamward.api | streamward.runner  the service | the runner (peers, never each other)
    streamward.tools, streamward.client operator tooling
    streamward.testing                  the host authors' test kit (tooling)

An import may point into its own room or a lower one. The checker is a plain AST walk (no
extra dependency): every ``import``/``from ... import`` anywhere in a module counts, inside
functions and under ``if TYPE_CHECKING:`` too, and so do ``importlib.import_module("...")``
and ``importlib.util.find_spec("...")`` with a literal name.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# top-level folder (a PEP 420 source root) -> the streamward packages it may hold
FOLDERS: dict[str, tuple[str, ...]] = {
    "lua": ("lua",),
    "core": ("core",),
    "api": ("api",),
    "runner": ("runner",),
    "tools": ("tools", "client", "testing"),
}
# streamward.<package> -> room, and each room's level: imports only point to the same room or
# to a lower level; api and runner share a level, so neither may import the other
ROOM_OF = {
    "lua": "lua",
    "core": "core",
    "api": "api",
    "runner": "runner",
    "tools": "tooling",
    "client": "tooling",
    "testing": "tooling",
}
LEVEL = {"lua": 0, "core": 1, "api": 2, "runner": 2, "tooling": 3}
# the folders were once importable as top-level packages (`api`, `runner`, `lua`); from the
# repository root they still are, as namespace packages, so an import of one would pass here
# and break in the wheel
OLD_TOP_LEVEL = frozenset(FOLDERS)
# calls whose literal first argument names a module to import (or look up, to import later)
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__", "find_spec"})

# Modules of the service, runner and Redis layer longer than this need an entry below, and
# docs/architecture.md ("Module size") states the same reason.
MAX_LINES = 400
SIZE_CHECKED = ("lua", "core", "api", "runner")
OVERSIZED: dict[str, str] = {}


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the checked base
    line: int
    imported: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.imported}: {self.why}"


def source_files(base: Path) -> Iterator[tuple[Path, str]]:
    """(file, module name) for every .py under the five source roots of ``base``."""
    for folder in FOLDERS:
        for path in sorted((base / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(base / folder).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield path, ".".join(parts)


def room_of(module: str) -> str | None:
    """The room a ``streamward.*`` module belongs to; None for anything else."""
    parts = module.split(".")
    if parts[0] != "streamward" or len(parts) < 2:
        return None
    return ROOM_OF.get(parts[1])


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, name] if name else base)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``tree``, wherever it sits."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            target = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            yield node.lineno, target
            # `from streamward import api` imports streamward.api
            if target == "streamward":
                for alias in node.names:
                    yield node.lineno, f"streamward.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr in DYNAMIC_IMPORTS)
                or (isinstance(node.func, ast.Name) and node.func.id in DYNAMIC_IMPORTS)
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def check_imports(base: Path) -> list[Violation]:
    """Every import under ``base``'s source roots that breaks the room rules."""
    found: list[Violation] = []
    for path, module in source_files(base):
        rel = str(path.relative_to(base))
        src_room = room_of(module)
        if src_room is None:
            found.append(Violation(rel, 1, module, "module outside streamward.<room>"))
            continue
        tree = ast.parse(path.read_text(), filename=rel)
        for line, name in imported_names(tree, module, path.name == "__init__.py"):
            top = name.split(".")[0]
            if top in OLD_TOP_LEVEL:
                found.append(Violation(rel, line, name, "old top-level name; use streamward.*"))
                continue
            if top != "streamward":
                continue  # stdlib and third party
            dst_room = room_of(name)
            if dst_room is None:
                if name != "streamward":
                    found.append(Violation(rel, line, name, "no such room"))
                continue
            if dst_room == src_room:
                continue
            if LEVEL[dst_room] >= LEVEL[src_room]:
                found.append(Violation(rel, line, name, f"{src_room} may not import {dst_room}"))
    return found


def misplaced_files(base: Path) -> list[str]:
    """Python files of a source root that are not inside that root's streamward packages, and
    any streamward/__init__.py (it would end the namespace at that root)."""
    bad: list[str] = []
    for folder, packages in FOLDERS.items():
        for path in sorted((base / folder).rglob("*.py")):
            parts = path.relative_to(base / folder).parts
            if parts[:1] != ("streamward",) or len(parts) < 3 or parts[1] not in packages:
                bad.append(str(path.relative_to(base)))
    return bad


# --- the rules hold on the repository -----------------------------------------------------


def test_imports_only_point_down() -> None:
    assert [str(v) for v in check_imports(ROOT)] == []


def test_every_module_sits_in_its_room_and_the_namespace_stays_open() -> None:
    assert misplaced_files(ROOT) == []


def _line_counts() -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in SIZE_CHECKED
        for path, _ in source_files(ROOT)
        if path.is_relative_to(ROOT / folder)
    }


def test_service_runner_and_redis_layer_modules_stay_small() -> None:
    counts = _line_counts()
    too_big = {p: n for p, n in counts.items() if n > MAX_LINES and p not in OVERSIZED}
    assert too_big == {}, (
        f"over {MAX_LINES} lines: split the module, or add it to OVERSIZED with a reason "
        "that docs/architecture.md ('Module size') also states"
    )


def test_the_size_allow_list_has_no_stale_entries() -> None:
    # an entry whose module was split (or removed) must go, so the list stays minimal
    counts = _line_counts()
    stale = [p for p in OVERSIZED if counts.get(p, 0) <= MAX_LINES]
    assert stale == [], "now within the limit or gone: remove from OVERSIZED and the docs"


def test_every_size_exception_is_explained_in_the_docs() -> None:
    doc_lines = ARCHITECTURE.read_text().splitlines()
    unexplained = [
        path
        for path, reason in OVERSIZED.items()
        if not any(f"`{path}`" in line and reason in line for line in doc_lines)
    ]
    assert unexplained == []


def _documented_modules() -> list[str]:
    """Module names in the first column of the tables of docs/architecture.md."""
    row = re.compile(r"^\|\s*`(streamward(?:\.\w+)+)`\s*\|")
    return [m.group(1) for line in ARCHITECTURE.read_text().splitlines() if (m := row.match(line))]


def test_every_module_is_in_the_package_table() -> None:
    documented = _documented_modules()
    modules = {module for _, module in source_files(ROOT)}
    assert sorted(modules - set(documented)) == [], "add a row to docs/architecture.md"
    assert sorted(set(documented) - modules) == [], "no such module: remove the row"
    assert sorted({m for m in documented if documented.count(m) > 1}) == []


# --- the checker itself can fail ----------------------------------------------------------


def _write(base: Path, rel: str, text: str) -> None:
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    """A tiny house that follows the rules."""
    for folder, packages in FOLDERS.items():
        for package in packages:
            _write(tmp_path, f"{folder}/streamward/{package}/__init__.py", '"""ok."""\n')
    _write(tmp_path, "lua/streamward/lua/keys.py", "import json\n")
    _write(tmp_path, "core/streamward/core/logs.py", "from streamward.lua import keys\n")
    _write(
        tmp_path,
        "api/streamward/api/deps.py",
        "from streamward.core import logs\nfrom . import main\nfrom .routes import x\n",
    )
    _write(tmp_path, "runner/streamward/runner/replica.py", "import streamward.lua.keys\n")
    _write(
        tmp_path,
        "tools/streamward/tools/cli.py",
        "import streamward.api.main\nimport streamward.runner.replica\n"
        "from streamward.client import Client\nfrom streamward import api\n",
    )
    return tmp_path


def test_the_checker_accepts_a_tree_that_follows_the_rules(fake_tree: Path) -> None:
    assert check_imports(fake_tree) == []
    assert misplaced_files(fake_tree) == []


@pytest.mark.parametrize(
    ("rel", "text", "imported", "why"),
    [
        ("runner/streamward/runner/metrics.py", "from streamward.api import metrics\n",
         "streamward.api", "runner may not import api"),
        ("api/streamward/api/deps.py", "import streamward.runner.context\n",
         "streamward.runner.context", "api may not import runner"),
        ("api/streamward/api/main.py", "def f():\n    from streamward.tools import cli\n",
         "streamward.tools", "api may not import tooling"),
        ("runner/streamward/runner/a.py", "from streamward.client import Client\n",
         "streamward.client", "runner may not import tooling"),
        ("lua/streamward/lua/store.py",
         "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import streamward.core.logs\n",
         "streamward.core.logs", "lua may not import core"),
        ("core/streamward/core/logs.py", "from streamward import api\n",
         "streamward.api", "core may not import api"),
        ("runner/streamward/runner/replica.py", "from ..api import deps\n",
         "streamward.api", "runner may not import api"),
        ("lua/streamward/lua/x.py", "import importlib\nimportlib.import_module('streamward.api')\n",
         "streamward.api", "lua may not import api"),
        ("tools/streamward/tools/r.py", "import importlib.util as u\nu.find_spec('api.b')\n",
         "api.b", "old top-level name; use streamward.*"),
        ("runner/streamward/runner/cli.py", "from api.metrics import REGISTRY\n",
         "api.metrics", "old top-level name; use streamward.*"),
        ("api/streamward/api/x.py", "import lua.keys\n",
         "lua.keys", "old top-level name; use streamward.*"),
        ("tools/streamward/tools/x.py", "import runner\n",
         "runner", "old top-level name; use streamward.*"),
        ("api/streamward/api/x.py", "import streamward.apii\n",
         "streamward.apii", "no such room"),
    ],
)  # fmt: skip
def test_the_checker_reports_a_bad_import(
    fake_tree: Path, rel: str, text: str, imported: str, why: str
) -> None:
    _write(fake_tree, rel, text)
    found = check_imports(fake_tree)
    assert [(v.path, v.imported, v.why) for v in found] == [(rel, imported, why)]


def test_the_checker_reports_misplaced_files(fake_tree: Path) -> None:
    _write(fake_tree, "api/helpers.py", "")
    _write(fake_tree, "runner/streamward/__init__.py", "")
    _write(fake_tree, "tools/streamward/api/x.py", "")
    assert misplaced_files(fake_tree) == [
        "api/helpers.py",
        "runner/streamward/__init__.py",
        "tools/streamward/api/x.py",
    ]
