"""The package's shape: no import cycle between service modules, no script on a test module."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"


def _imports(path: Path) -> set[str]:
    """Sibling modules imported at run time (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for stmt in branch.body
        for node in ast.walk(stmt)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.ImportFrom) or node.level != 1:
            continue
        if node.module:
            found.add(node.module.split(".")[0])
        else:
            found.update(alias.name for alias in node.names)
    return found - {"sql"}


def test_no_import_cycle_between_service_modules() -> None:
    graph = {path.stem: _imports(path) for path in SERVICE.glob("*.py")}
    assert set().union(*graph.values()) <= set(graph)
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as cycle:  # pragma: no cover - the failure message
        raise AssertionError(f"import cycle: {cycle.args[1]}") from None
    assert order.index("states") < order.index("db") < order.index("app")


def test_no_script_imports_a_test_module() -> None:
    for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "docs").glob("*.py")]:
        source = path.read_text()
        assert "tests.conftest" not in source and "from tests import conftest" not in source
        assert "from tests.test_" not in source, path
