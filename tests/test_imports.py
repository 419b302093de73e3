"""Who may import whom, checked on the source of every module (lazy imports included).

schemas <- core <- consumers, gateway <- ops: schemas imports nothing of ours, core only
schemas, consumers and gateway only core and schemas (never each other), ops anything.
No package imports `tests`, and no module of `tests` imports a test module: shared
helpers live in helper modules (`tests/helpers/`, `tests/procs.py`, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("schemas", "core", "consumers", "gateway", "ops")
MAY_IMPORT = {
    "schemas": {"schemas"},
    "core": {"core", "schemas"},
    "consumers": {"consumers", "core", "schemas"},
    "gateway": {"gateway", "core", "schemas"},
    "ops": set(PARTS),
}


def imported(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `tree`, the module named `module`."""
    package = module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from livefeed import core`, `from tests.core import test_x`: the names
            # imported may be modules themselves.
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def violations(part: str, module: str, source: str) -> list[str]:
    """What `module` (in `part`: one of PARTS or "tests") imports against the rules."""
    out: list[str] = []
    for line, name in imported(ast.parse(source), module):
        where = f"{module}:{line} imports {name}"
        head, _, rest = name.partition(".")
        if head in PARTS:
            out.append(f"{where}: import livefeed.{name}, the bare name is not installed")
        elif head == "livefeed" and rest:
            target = rest.split(".")[0]
            if part != "tests" and target in PARTS and target not in MAY_IMPORT[part]:
                out.append(f"{where}: {part} may import only {sorted(MAY_IMPORT[part])}")
        elif head == "tests":
            if part != "tests":
                out.append(f"{where}: the package must not depend on its tests")
            elif any(p.startswith("test_") for p in name.split(".")[1:]):
                out.append(f"{where}: move the shared helper into a helper module")
    return out


def modules() -> list[tuple[str, str, Path]]:
    """(part, dotted module name, path) of every Python file of the packages and tests."""
    found = []
    for part in (*PARTS, "tests"):
        for path in sorted((ROOT / part).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            dotted = ".".join(rel.parts)
            name = dotted if part == "tests" else f"livefeed.{dotted}"
            found.append((part, name, path))  # `pkg.__init__`: relative imports resolve
    return found


def test_every_module_keeps_the_import_rules() -> None:
    checked = modules()
    assert {part for part, _, _ in checked} == {*PARTS, "tests"}
    broken = [v for part, name, path in checked
              for v in violations(part, name, path.read_text())]
    assert broken == []


@pytest.mark.parametrize(("part", "module", "source"), [
    ("schemas", "livefeed.schemas.event", "from livefeed.core import keys"),
    ("core", "livefeed.core.db", "import livefeed.gateway.app"),
    ("core", "livefeed.core.db", "from livefeed import ops"),
    ("core", "livefeed.core.db", "def f():\n    from livefeed.consumers import persist"),
    ("core", "livefeed.core.db", "from ..gateway import app"),
    ("gateway", "livefeed.gateway.app", "from livefeed.consumers.persist import run"),
    ("consumers", "livefeed.consumers.persist", "from livefeed.gateway import hub"),
    ("consumers", "livefeed.consumers.persist", "from livefeed.ops import runtime"),
    ("ops", "livefeed.ops.cli", "import core.keys"),
    ("ops", "livefeed.ops.cli", "from tests.procs import Proc"),
    ("tests", "tests.ops.test_cli", "from tests.core.test_inspect import event"),
    ("tests", "tests.ops.test_cli", "from tests.core import test_inspect"),
    ("tests", "tests.helpers.streams", "from .test_x import y"),
    ("core", "livefeed.core.__init__", "from ..gateway import app"),
])
def test_a_forbidden_import_is_reported(part: str, module: str, source: str) -> None:
    assert violations(part, module, source)


@pytest.mark.parametrize(("part", "module", "source"), [
    ("schemas", "livefeed.schemas.event", "import msgspec"),
    ("core", "livefeed.core.db", "from livefeed.schemas.event import Event"),
    ("core", "livefeed.core.db", "from . import keys"),
    ("core", "livefeed.core.__init__", "from .keys import Keys"),
    ("gateway", "livefeed.gateway.app", "from livefeed.core import auth"),
    ("ops", "livefeed.ops.cli", "from livefeed.gateway.app import create_app"),
    ("ops", "livefeed.ops.cli", "from livefeed.consumers import fanout"),
    ("tests", "tests.ops.test_cli", "from tests.helpers.streams import event"),
    ("tests", "tests.ops.test_cli", "from livefeed.gateway.hub import Hub"),
])
def test_an_allowed_import_passes(part: str, module: str, source: str) -> None:
    assert violations(part, module, source) == []
