"""Helpers for the migration tests: files, the CLI in-process, a query (no pytest import)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from service.cli import main

if TYPE_CHECKING:
    import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "sql"


def write(directory: Path, name: str, forward: str, backward: str = "") -> None:
    """A migration pair `name.sql` / `name.rollback.sql` in `directory`."""
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.sql").write_text(forward)
    (directory / f"{name}.rollback.sql").write_text(backward)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`python -m service migrate ARGV` in-process: (exit status, stdout, stderr)."""
    code = main(["migrate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as con:
        return con.execute(sql).fetchall()
