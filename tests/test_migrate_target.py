"""`migrate apply` and `rollback` change a database: never libpq's default one by accident,
and always naming the one they are about to change (service/migrations/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.cli import main
from service.settings import DEV_ENV_FILE
from tests.support.migrations import login_role

REFUSED = (
    "error: DATABASE_URL is not set: migrate {action} changes a database and never assumes "
    "localhost:5432 (set DATABASE_URL, --database, or run scripts/dev)\n"
)


@pytest.fixture
def nothing_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """No DATABASE_URL, no PG* variable, no .env, no dev file; connecting is recorded."""
    monkeypatch.chdir(tmp_path)
    for var in ("DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    attempts: list[Any] = []

    def connect(*args: Any, **kwargs: Any) -> None:
        attempts.append((args, kwargs))
        raise psycopg.OperationalError("connection refused (no server in this test)")

    monkeypatch.setattr(psycopg, "connect", connect)
    return attempts


@pytest.mark.parametrize("argv", [["apply"], ["rollback"], ["rollback", "--all"]])
def test_a_change_with_no_target_is_refused_and_connects_nowhere(
    capsys: pytest.CaptureFixture[str], nothing_configured: list[Any], argv: list[str]
) -> None:
    assert main(["migrate", *argv]) == 2
    assert capsys.readouterr() == ("", REFUSED.format(action=argv[0]))
    assert nothing_configured == []


def test_list_still_reads_libpq_defaults(
    capsys: pytest.CaptureFixture[str], nothing_configured: list[Any]
) -> None:
    # Reading changes nothing: `list` keeps libpq's defaults, as psql does.
    assert main(["migrate", "list"]) == 2  # it tried, and could not connect
    assert nothing_configured, "list did not try libpq's default server"
    assert "error: " in capsys.readouterr().err


def test_an_empty_database_url_counts_as_none(
    capsys: pytest.CaptureFixture[str],
    nothing_configured: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", " ")
    (Path.cwd() / ".env").write_text("DATABASE_URL=\n")
    assert main(["migrate", "apply"]) == 2
    assert capsys.readouterr().err == REFUSED.format(action="apply")


def test_apply_and_rollback_name_the_target_first_password_hidden(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    empty_database_url: str,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "0001_first.sql").write_text("CREATE TABLE first (id int);\n")
    (sql / "0001_first.rollback.sql").write_text("DROP TABLE first;\n")
    with login_role(empty_database_url, "GRANT CREATE ON SCHEMA public TO {role}") as (
        url,
        redacted,
    ):
        assert main(["migrate", "apply", "--database", url, "--dir", str(sql)]) == 0
        applied = capsys.readouterr().out
        assert main(["migrate", "rollback", "--database", url, "--dir", str(sql)]) == 0
        undone = capsys.readouterr().out
    target = f"target {redacted}"
    assert applied.splitlines() == [target, "applied 0001_first", "1 applied"]
    assert undone.splitlines() == [target, "rolled back 0001_first", "1 rolled back"]


def test_libpq_variables_are_a_target_and_named(
    capsys: pytest.CaptureFixture[str],
    nothing_configured: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", "9")  # nothing listens: the target line comes first anyway
    monkeypatch.setenv("PGUSER", "app")
    monkeypatch.setenv("PGDATABASE", "orders")
    code = main(["migrate", "apply"])
    out, err = capsys.readouterr()
    assert out == "target postgresql://app@127.0.0.1:9/orders (libpq defaults)\n"
    assert code == 2 and err.startswith("error: cannot connect")


def test_the_dev_file_is_a_target(
    capsys: pytest.CaptureFixture[str],
    nothing_configured: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dev_file = Path.cwd() / DEV_ENV_FILE
    dev_file.parent.mkdir()
    dev_file.write_text("DATABASE_URL=postgresql://postgres@127.0.0.1:9/postgres\n")
    assert main(["migrate", "apply"]) == 2  # it tried to connect (and nothing listens)
    assert capsys.readouterr().out == "target postgresql://postgres@127.0.0.1:9/postgres\n"
    assert len(nothing_configured) == 1
