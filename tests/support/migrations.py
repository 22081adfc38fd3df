"""Helpers for the migration tests: files, the CLI in-process, a query (no pytest import)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from service.cli import main

if TYPE_CHECKING:
    import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "sql"
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "migrations.md"


def shipped_ids() -> list[str]:
    """The ids in sql/: the baseline, and whatever a feature added (the tests pass either way)."""
    return sorted(
        p.name.removesuffix(".sql") for p in SHIPPED.glob("*.sql") if ".rollback" not in p.name
    )


def with_baseline(directory: Path) -> Path:
    """`directory`, created, holding the shipped baseline pair (0001_*)."""
    directory.mkdir()
    for path in SHIPPED.glob("0001_*"):
        shutil.copy(path, directory)
    return directory


def write(directory: Path, name: str, forward: str, backward: str = "") -> None:
    """A migration pair `name.sql` / `name.rollback.sql` in `directory`."""
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.sql").write_text(forward)
    (directory / f"{name}.rollback.sql").write_text(backward)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`python -m service migrate ARGV` in-process: (exit status, stdout, stderr).

    The `target URL` line apply and rollback print first is left out of stdout: the tests
    of the target line read it (tests/test_migrate_target.py), the others read results.
    """
    code = main(["migrate", *argv])
    out, err = capsys.readouterr()
    if argv and argv[0] in ("apply", "rollback") and out.startswith("target "):
        out = out.partition("\n")[2]
    return code, out, err


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as con:
        return con.execute(sql).fetchall()


def documented_sql(name: str) -> str:
    """The ```sql block after the line `sql/NAME`: in docs/migrations.md (tests run the docs)."""
    text = GUIDE.read_text()
    opening = f"`sql/{name}`:\n\n```sql\n"
    start = text.index(opening) + len(opening)
    return text[start : text.index("```", start)]


@contextmanager
def login_role(database_url: str, *grants: str) -> Iterator[tuple[str, str]]:
    """A new role that logs in with a password, on `database_url`'s database: (its URL, that
    URL as the errors show it, password hidden). `grants`: statements with `{role}`. The
    role and what it owns are dropped after."""
    role = f"svc_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as con:
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Sup3rSecret'")
        for grant in grants:
            con.execute(grant.format(role=role))
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    where = f"{info['host']}:{info['port']}/{info['dbname']}"
    try:
        yield f"postgresql://{role}:Sup3rSecret@{where}", f"postgresql://{role}:***@{where}"
    finally:
        with psycopg.connect(database_url, autocommit=True) as con:
            con.execute(f"DROP OWNED BY {role}")
            con.execute(f"DROP ROLE {role}")
