"""Migrations against real PostgreSQL: the command, the lock, checksums, failures, yoyo's CLI."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service import create_app, migrations
from service.migrations import MigrationError, Runner, Target
from service.migrations.scaffold import new
from service.settings import DatabaseURL
from tests.support.apps import running, test_settings
from tests.support.cluster import bin_dir, free_port
from tests.support.migrations import (
    SHIPPED,
    cli,
    documented_sql,
    login_role,
    query,
    shipped_ids,
    with_baseline,
    write,
)
from tests.support.polling import wait_until
from tests.support.servers import Server

ROOT = Path(__file__).resolve().parent.parent
BOOKKEEPING = ("_yoyo_", "yoyo_lock", "service_migration_checksums")
# This test's database only: workers may share a server (CI's second pass).
ACTIVITY = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND "

CATALOGUE = """
SELECT 'schema', nspname FROM pg_namespace
 WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
UNION ALL
SELECT 'column', format('%s.%s.%s %s null=%s default=%s', table_schema, table_name, column_name,
       data_type, is_nullable, column_default)
  FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'index', format('%s %s', schemaname, indexdef) FROM pg_indexes
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'constraint', format('%s %s %s', conrelid::regclass, conname, pg_get_constraintdef(c.oid))
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'view', format('%s.%s %s', schemaname, viewname, definition) FROM pg_views
 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'function', format('%s %s', p.oid::regprocedure, md5(p.prosrc))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'type', format('%s %s', t.oid::regtype, t.typtype)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND t.typtype IN ('e', 'd')
UNION ALL
SELECT 'sequence', format('%s.%s', schemaname, sequencename) FROM pg_sequences
UNION ALL
SELECT 'trigger', pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'extension', extname FROM pg_extension
ORDER BY 1, 2
"""


def catalogue(url: str) -> list[tuple[str, str]]:
    """The schema as text rows, without the migration bookkeeping tables."""
    with psycopg.connect(url) as con:
        rows = con.execute(CATALOGUE).fetchall()
    return [(kind, text) for kind, text in rows if not any(b in text for b in BOOKKEEPING)]


@pytest.fixture
def empty_url(server: Server) -> Iterator[str]:
    """A database no migration has touched."""
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    """The shipped baseline plus a table and a row: enough to see order and undo."""
    directory = with_baseline(tmp_path / "sql")
    write(
        directory,
        "0002_things",
        "CREATE TABLE things (id int PRIMARY KEY);\n",
        "DROP TABLE things;",
    )
    write(
        directory, "0003_thing_one", "INSERT INTO things (id) VALUES (1);\n", "DELETE FROM things;"
    )
    return directory


def wait_until_seen(url: str, sql: str, process: subprocess.Popen[str]) -> None:
    """Poll until `sql` returns a row, while `process` still runs (30 s at most)."""

    def seen() -> list[tuple[Any, ...]]:
        assert process.poll() is None, process.communicate()
        return query(url, sql)

    wait_until(seen, f"a row from {sql!r}")


def apply_count(url: str, migration_id: str) -> int:
    rows = query(
        url,
        f"SELECT count(*) FROM _yoyo_log WHERE operation = 'apply' "
        f"AND migration_id = '{migration_id}'",
    )
    return rows[0][0]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def migrate_process(url: str, directory: Path, *argv: str, **env: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "service", "migrate", *argv, "--database", url]
    return subprocess.Popen(
        [*command, "--dir", str(directory)],
        cwd=directory,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- the shipped migrations ----------------------------------------------------------------


def test_every_shipped_migration_round_trips(empty_url: str) -> None:
    before = catalogue(empty_url)
    target = Target.parse(empty_url)
    with Runner(target, SHIPPED) as runner:
        applied = runner.apply()
        assert applied == [m.id for m in runner.migrations]
        first = catalogue(empty_url)
        assert runner.rollback(count=0) == applied[::-1]
        assert catalogue(empty_url) == before
        assert runner.apply() == applied
    assert catalogue(empty_url) == first
    assert {s.state for s in migrations.status(target, SHIPPED)} == {"applied"}


def test_shipped_files_are_found_and_pair_up() -> None:
    directory = migrations.default_directory()
    assert sorted(directory.glob("*.sql")) == sorted(SHIPPED.glob("*.sql"))
    forward = {p.name for p in SHIPPED.glob("*.sql") if not p.name.endswith(".rollback.sql")}
    backward = {p.name.replace(".rollback", "") for p in SHIPPED.glob("*.rollback.sql")}
    assert forward == backward and "0001_baseline.sql" in forward


def test_the_wheel_ships_sql_as_service_sql() -> None:
    # Building a wheel takes seconds; the mapping it follows is checked here instead
    # (docs/migrations.md shows the wheel listing and an install migrating from it).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["service.sql"] == "sql"
    assert "service.sql" in config["packages"]
    assert config["package-data"]["service.sql"] == ["*.sql"]


# -- the command ---------------------------------------------------------------------------


def test_apply_list_rollback(
    capsys: pytest.CaptureFixture[str], empty_url: str, sql_dir: Path
) -> None:
    args = ("--database", empty_url, "--dir", str(sql_dir))
    assert cli(capsys, "list", *args) == (
        0,
        "pending  0001_baseline\npending  0002_things\npending  0003_thing_one\n",
        "",
    )
    code, out, _ = cli(capsys, "apply", *args)
    assert (code, out.splitlines()[-1]) == (0, "3 applied")
    assert cli(capsys, "apply", *args)[:2] == (0, "nothing to apply\n")
    assert cli(capsys, "rollback", *args)[:2] == (0, "rolled back 0003_thing_one\n1 rolled back\n")
    assert query(empty_url, "SELECT count(*) FROM things") == [(0,)]
    assert cli(capsys, "apply", *args)[0] == 0
    code, out, _ = cli(capsys, "rollback", "--to", "0001_baseline", *args)
    assert out.splitlines()[:2] == ["rolled back 0003_thing_one", "rolled back 0002_things"]
    assert query(empty_url, "SELECT to_regclass('things')") == [(None,)]
    assert cli(capsys, "list", *args)[1].startswith("applied  0001_baseline\npending  0002")
    assert (
        cli(capsys, "rollback", "--all", *args)[1] == "rolled back 0001_baseline\n1 rolled back\n"
    )
    assert cli(capsys, "rollback", *args)[1] == "nothing to roll back\n"


def test_rollback_to_an_unknown_or_pending_revision(
    capsys: pytest.CaptureFixture[str], database_url: str, sql_dir: Path
) -> None:
    args = ("--database", database_url, "--dir", str(sql_dir))
    code, out, err = cli(capsys, "rollback", "--to", "0007_nope", *args)
    assert (code, out) == (1, "")
    assert err == f"error: cannot roll back to 0007_nope: it is not a migration in {sql_dir}\n"
    code, _, err = cli(capsys, "rollback", "--to", "0002_things", *args)
    assert err == "error: cannot roll back to 0002_things: it is not applied\n"


def test_list_shows_applied_migrations_whose_file_is_gone(
    capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(capsys, "list", "--database", database_url, "--dir", str(empty))[1] == "".join(
        f"missing  {migration_id}\n" for migration_id in shipped_ids()
    )


def test_new_creates_the_next_numbered_pair(
    capsys: pytest.CaptureFixture[str], sql_dir: Path
) -> None:
    code, out, _ = cli(capsys, "new", "add_users", "--dir", str(sql_dir))
    assert code == 0
    assert out.splitlines() == [
        f"created {sql_dir / '0004_add_users.sql'}",
        f"created {sql_dir / '0004_add_users.rollback.sql'}",
    ]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("Add Users", "error: migration name 'Add Users': use lower-case letters, digits and _\n"),
        ("abc\n", "error: migration name 'abc\\n': use lower-case letters, digits and _\n"),
        ("a" * 300, "error: migration name is 300 characters long; at most 63\n"),
    ],
)
def test_new_refuses_a_bad_name_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], sql_dir: Path, name: str, line: str
) -> None:
    before = sorted(sql_dir.iterdir())
    assert cli(capsys, "new", name, "--dir", str(sql_dir)) == (2, "", line)
    assert sorted(sql_dir.iterdir()) == before


def test_new_takes_a_name_of_the_longest_length(
    capsys: pytest.CaptureFixture[str], sql_dir: Path
) -> None:
    code, out, _ = cli(capsys, "new", "a" * 63, "--dir", str(sql_dir))
    assert code == 0
    assert (sql_dir / f"0004_{'a' * 63}.rollback.sql").is_file()


def test_new_migration_files_apply_and_roll_back(database_url: str, sql_dir: Path) -> None:
    new("nothing_yet", sql_dir)
    with Runner(Target.parse(database_url), sql_dir) as runner:
        assert runner.apply() == ["0002_things", "0003_thing_one", "0004_nothing_yet"]
        assert runner.rollback() == ["0004_nothing_yet"]


def test_missing_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nowhere = "postgresql://127.0.0.1:9/never_reached"  # the folder is read first
    code, _, err = cli(capsys, "apply", "--dir", str(tmp_path / "nope"), "--database", nowhere)
    assert (code, err) == (1, f"error: migrations directory {tmp_path / 'nope'} does not exist\n")


def test_database_url_unset_uses_libpq_variables(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    tmp_path: Path,
) -> None:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for var, key in (("PGHOST", "host"), ("PGPORT", "port"), ("PGUSER", "user")):
        monkeypatch.setenv(var, str(info[key]))
    monkeypatch.setenv("PGDATABASE", str(info["dbname"]))
    if "password" in info:
        monkeypatch.setenv("PGPASSWORD", str(info["password"]))
    applied = "".join(f"applied  {migration_id}\n" for migration_id in shipped_ids())
    assert cli(capsys, "list", "--dir", str(SHIPPED)) == (0, applied, "")


def test_password_never_printed_when_the_database_is_down_or_refuses(
    capsys: pytest.CaptureFixture[str], server: Server
) -> None:
    port = free_port()
    down = f"postgresql+asyncpg://app:Sup3rSecret@127.0.0.1:{port}/app"
    code, out, err = cli(capsys, "apply", "--database", down)
    assert (code, out) == (2, "")
    assert err == (
        f"error: cannot connect to postgresql://app:***@127.0.0.1:{port}/app: connection to "
        f'server at "127.0.0.1", port {port} failed: Connection refused\n'
    )
    info = psycopg.conninfo.conninfo_to_dict(server.admin_url)
    refused = f"postgresql://nobody:Sup3rSecret@{info['host']}:{info['port']}/no_such_db"
    code, _, err = cli(capsys, "list", "--database", refused)
    assert code == 2 and err.count("\n") == 1
    assert "nobody" in err and "***" in err
    assert "Sup3rSecret" not in out + err


@pytest.mark.parametrize(
    "action",
    [
        ["apply"],
        ["apply", "--sql"],
        ["rollback"],
        ["list"],
        ["check"],
        ["accept", "0001_baseline"],
        ["baseline", "0001_baseline"],
    ],
)
def test_cannot_connect_is_exit_2_for_every_command(
    capsys: pytest.CaptureFixture[str], action: list[str]
) -> None:
    down = f"postgresql://app:Sup3rSecret@127.0.0.1:{free_port()}/app"
    code, out, err = cli(capsys, *action, "--database", down, "--dir", str(SHIPPED))
    assert (code, out) == (2, "")
    assert err.startswith("error: cannot connect to postgresql://app:***@127.0.0.1:")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_check_says_whether_the_database_is_up_to_date(
    capsys: pytest.CaptureFixture[str], empty_url: str, sql_dir: Path
) -> None:
    args = ("--database", empty_url, "--dir", str(sql_dir))
    assert cli(capsys, "check", *args) == (
        1,
        "pending  0001_baseline\npending  0002_things\npending  0003_thing_one\n",
        "",
    )
    # Read-only: checking created nothing, not even the bookkeeping tables.
    assert query(empty_url, "SELECT to_regclass('_yoyo_migration')") == [(None,)]
    assert cli(capsys, "apply", *args)[0] == 0
    assert cli(capsys, "check", *args) == (0, "up to date: 3 applied\n", "")
    with (sql_dir / "0002_things.sql").open("a") as f:
        f.write("-- edited\n")
    write(sql_dir, "0004_more", "CREATE TABLE more (id int);")
    assert cli(capsys, "check", *args) == (
        1,
        "changed  0002_things (edited after it was applied: restore it, or accept it: "
        "python -m service migrate accept 0002_things)\npending  0004_more\n",
        "",
    )
    assert cli(capsys, "accept", "0002_things", *args)[0] == 0
    assert cli(capsys, "apply", *args)[0] == 0
    # A database ahead of this code (a newer release migrated it) is up to date for it.
    (sql_dir / "0004_more.sql").unlink()
    assert cli(capsys, "check", *args) == (
        0,
        "missing  0004_more (applied, but no file here: the database is ahead)\n"
        "up to date: 3 applied\n",
        "",
    )


def test_check_runs_in_a_read_only_transaction_and_any_error_is_2(
    capsys: pytest.CaptureFixture[str], database_url: str, tmp_path: Path
) -> None:
    with migrations.connection.reading(Target.parse(database_url)) as con:
        assert con.execute("SHOW transaction_read_only").fetchone() == ("on",)
    code, _, err = cli(capsys, "check", "--dir", str(tmp_path / "nope"))
    assert (code, err) == (2, f"error: migrations directory {tmp_path / 'nope'} does not exist\n")
    with login_role(database_url) as (url, redacted):
        code, out, err = cli(capsys, "check", "--database", url, "--dir", str(SHIPPED))
    assert (code, out) == (2, "")
    assert err == f"error: {redacted}: permission denied for table _yoyo_migration\n"


def test_a_database_error_mid_run_is_one_line(
    capsys: pytest.CaptureFixture[str], empty_url: str
) -> None:
    with psycopg.connect(empty_url, autocommit=True) as con:
        con.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # the default before PG 15
    with login_role(empty_url) as (url, redacted):
        code, out, err = cli(capsys, "apply", "--database", url, "--dir", str(SHIPPED))
    assert (code, out) == (1, "")
    assert err == f"error: {redacted}: permission denied for schema public\n"


def test_bad_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "list", "--database", "mysql://root@db/app")
    assert code == 2 and err.startswith("error: --database: scheme 'mysql' is not PostgreSQL")


# -- adopting a database: baseline --------------------------------------------------------

# What the original design's Alembic leaves behind (alembic/versions/0001_baseline.py).
ALEMBIC_VERSION = (
    "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL, "
    "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
    "INSERT INTO alembic_version (version_num) VALUES ('0001_baseline')",
)


def test_baseline_adopts_a_database_alembic_made(
    capsys: pytest.CaptureFixture[str], empty_url: str, sql_dir: Path
) -> None:
    with psycopg.connect(empty_url, autocommit=True) as con:
        for statement in ALEMBIC_VERSION:
            con.execute(statement)
        con.execute("CREATE TABLE things (id int PRIMARY KEY)")  # the schema is there
        con.execute("INSERT INTO things VALUES (7)")
    args = ("--database", empty_url, "--dir", str(sql_dir))
    code, out, err = cli(capsys, "apply", *args)
    assert (code, out) == (1, "")
    assert err == (
        "error: this database was migrated by Alembic (alembic_version '0001_baseline') and no "
        "migration is recorded here: adopt its schema first with python -m service migrate "
        "baseline ID (docs/migrations.md, Coming from Alembic)\n"
    )
    assert cli(capsys, "baseline", "0002_things", *args) == (
        0,
        "found alembic_version '0001_baseline' (not 0002_things: check the schema); left as it "
        "is: see docs/migrations.md, Coming from Alembic\n"
        "recorded 0001_baseline\nrecorded 0002_things\n2 recorded as applied, none run\n",
        "",
    )
    assert query(
        empty_url,
        "SELECT m.migration_id, l.operation, c.checksum IS NOT NULL FROM _yoyo_migration m "
        "JOIN _yoyo_log l USING (migration_id) "
        "LEFT JOIN service_migration_checksums c USING (migration_id) ORDER BY 1",
    ) == [("0001_baseline", "mark", True), ("0002_things", "mark", True)]
    assert cli(capsys, "check", *args)[:2] == (1, "pending  0003_thing_one\n")
    assert cli(capsys, "apply", *args)[:2] == (0, "applied 0003_thing_one\n1 applied\n")
    assert cli(capsys, "check", *args)[:2] == (0, "up to date: 3 applied\n")
    assert query(empty_url, "SELECT id FROM things ORDER BY id") == [(1,), (7,)]
    assert query(empty_url, "SELECT * FROM alembic_version") == [("0001_baseline",)]
    # Once anything is recorded, baseline refuses: it adopts, it never rewrites a record.
    code, out, err = cli(capsys, "baseline", "0001_baseline", *args)
    assert (code, out) == (2, "")
    assert err == (
        "error: cannot baseline: 3 migration(s) already recorded here (the latest "
        "0003_thing_one); baseline adopts a database with none\n"
    )


def test_baseline_refuses_an_unknown_id_and_records_nothing(
    capsys: pytest.CaptureFixture[str], empty_url: str, sql_dir: Path
) -> None:
    args = ("--database", empty_url, "--dir", str(sql_dir))
    assert cli(capsys, "baseline", "0009_nope", *args) == (
        2,
        "",
        f"error: cannot baseline at 0009_nope: it is not a migration in {sql_dir}\n",
    )
    assert cli(capsys, "baseline", "0001_baseline", *args)[:2] == (
        0,
        "recorded 0001_baseline\n1 recorded as applied, none run\n",
    )
    assert cli(capsys, "list", *args)[1] == (
        "applied  0001_baseline\npending  0002_things\npending  0003_thing_one\n"
    )


# -- apply --sql: the script a DBA runs ----------------------------------------------------

PSQL = bin_dir() / "psql"
STATE = (
    # yoyo's tables and ours, as created: columns, keys.
    "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '') "
    "FROM information_schema.columns WHERE table_name IN ('_yoyo_migration', '_yoyo_log', "
    "'_yoyo_version', 'yoyo_lock', 'service_migration_checksums') ORDER BY 1, 2",
    "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conrelid::regclass::text IN ('_yoyo_migration', '_yoyo_log', '_yoyo_version', "
    "'yoyo_lock', 'service_migration_checksums') ORDER BY 1, 2",
    # Their rows, in the order they were written.
    "SELECT migration_hash, migration_id FROM _yoyo_migration ORDER BY applied_at_utc",
    "SELECT migration_hash, migration_id, operation, username, hostname, comment "
    "FROM _yoyo_log ORDER BY created_at_utc",
    "SELECT migration_id, checksum FROM service_migration_checksums ORDER BY 1",
    "SELECT version FROM _yoyo_version ORDER BY 1",
    "SELECT count(*) FROM yoyo_lock",
)
DATA = ("things", "seen", "seen_outside", "notes")


def state(url: str) -> list[Any]:
    """The schema, yoyo's tables and ours, and the rows of the tables the migrations fill."""
    found: list[Any] = [catalogue(url)]
    exists = query(url, "SELECT to_regclass('_yoyo_version') IS NOT NULL")[0][0]
    found += [query(url, sql) for sql in STATE] if exists else [None]
    for table in DATA:
        if query(url, f"SELECT to_regclass('{table}') IS NOT NULL")[0][0]:
            found.append(query(url, f"SELECT * FROM {table} ORDER BY 1"))
    return found


def psql(url: str, script: Path) -> subprocess.CompletedProcess[str]:
    command = [str(PSQL), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(script)]
    return subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=60)


@pytest.fixture
def two_empty_urls(server: Server) -> Iterator[tuple[str, str]]:
    names = [server.create_database() for _ in range(2)]
    yield server.url(names[0]), server.url(names[1])
    for name in names:
        server.drop_database(name)


def test_apply_sql_prints_what_apply_runs(
    capsys: pytest.CaptureFixture[str],
    two_empty_urls: tuple[str, str],
    sql_dir: Path,
    tmp_path: Path,
) -> None:
    printed, applied = two_empty_urls
    write(
        sql_dir,
        "0004_timeouts",
        "-- lock_timeout: 5\n-- statement_timeout: off\n"
        "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, "
        "current_setting('statement_timeout') AS statement_timeout, "
        "current_setting('transaction_isolation') AS isolation;\n",
    )
    write(
        sql_dir,
        "0005_outside",
        "-- transactional: false\n-- statement_timeout: 30\n"
        "CREATE INDEX CONCURRENTLY things_desc ON things (id DESC);\n"
        "CREATE TABLE seen_outside AS SELECT current_setting('lock_timeout') AS lock_timeout, "
        "current_setting('statement_timeout') AS statement_timeout;\n"
        "CREATE PROCEDURE fill_things() LANGUAGE plpgsql AS $$\nBEGIN\n"
        "    FOR i IN 10..12 LOOP INSERT INTO things VALUES (i); COMMIT; END LOOP;\nEND $$;\n"
        "CALL fill_things();\nDROP PROCEDURE fill_things();\n",
    )

    def both_ways(number: int) -> str:
        before = state(printed)
        code, script, err = cli(capsys, "apply", "--sql", "--database", printed, "--dir",
                                str(sql_dir))  # fmt: skip
        assert (code, err) == (0, "")
        assert state(printed) == before  # printing changed nothing
        path = tmp_path / f"pending-{number}.sql"
        path.write_text(script)
        ran = psql(printed, path)
        assert ran.returncode == 0, ran.stderr
        assert cli(capsys, "apply", "--database", applied, "--dir", str(sql_dir))[0] == 0
        assert state(printed) == state(applied)
        for url in (printed, applied):
            assert cli(capsys, "check", "--database", url, "--dir", str(sql_dir))[0] == 0
        return script

    script = both_ways(1)
    assert query(printed, "SELECT * FROM seen") == [("5s", "0", "read committed")]
    assert query(printed, "SELECT * FROM seen_outside") == [("1s", "30s")]
    assert query(printed, "SELECT id FROM things ORDER BY id") == [(1,), (10,), (11,), (12,)]
    block = script[script.index("-- 0003_thing_one.sql\n") :].split("COMMIT;")[0].splitlines()
    assert block[:5] == [
        "-- 0003_thing_one.sql",
        "BEGIN;",
        "SET LOCAL lock_timeout = '1000ms';",
        "SET LOCAL statement_timeout = '600000ms';",
        "INSERT INTO things (id) VALUES (1);",
    ]
    assert block[5].startswith('INSERT INTO "_yoyo_migration" ')
    outside = script[script.index("-- 0005_outside.sql (not transactional)\n") :]
    assert outside.split("BEGIN;")[0].splitlines()[1:3] == [
        "SET lock_timeout = '1000ms';",
        "SET statement_timeout = '30000ms';",
    ]

    # Later: one more migration, with literals psql and psycopg must both leave alone, and one
    # applied by plain yoyo (no checksum yet) that apply adopts. Printing takes no lock.
    write(sql_dir, "0006_notes", "CREATE TABLE notes (body text);\n"
          "INSERT INTO notes VALUES ('50% off; it''s :x $1 \\ %(y)s');\n")  # fmt: skip
    for url in (printed, applied):
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(
                "DELETE FROM service_migration_checksums WHERE migration_id = '0002_things'"
            )
    with Runner(Target.parse(printed), sql_dir):
        before = state(printed)
        code, script, _ = cli(capsys, "apply", "--sql", "--database", printed, "--dir",
                              str(sql_dir))  # fmt: skip
        assert code == 0  # printed beside a run: it takes no lock ...
        (tmp_path / "beside.sql").write_text(script)
        ran = psql(printed, tmp_path / "beside.sql")  # ... and the script will not run beside one
        assert ran.returncode == 3 and "another migration run holds the migration lock" in (
            ran.stderr
        )
        assert state(printed) == before
    script = both_ways(2)
    assert script.count("\nBEGIN;\n") == 1 and "-- 0006_notes.sql" in script
    assert "VALUES ('0002_things', " in script  # adopted
    assert query(printed, "SELECT body FROM notes") == [("50% off; it's :x $1 \\ %(y)s",)]
    assert query(
        printed,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    ) == [(0,)]


def test_apply_sql_refuses_what_apply_refuses(
    capsys: pytest.CaptureFixture[str], database_url: str, sql_dir: Path
) -> None:
    args = ("--database", database_url, "--dir", str(sql_dir))
    assert cli(capsys, "apply", *args)[0] == 0
    assert cli(capsys, "apply", "--sql", *args)[1].endswith("-- nothing to apply\n")
    with (sql_dir / "0002_things.sql").open("a") as f:
        f.write("-- edited\n")
    assert cli(capsys, "apply", "--sql", *args) == (
        1,
        "",
        "error: 0002_things.sql was edited after it was applied (checksum differs); restore it, "
        "or accept the new content: python -m service migrate accept 0002_things\n",
    )


# -- failures ------------------------------------------------------------------------------


def test_broken_migration_leaves_nothing_and_names_file_and_statement(
    capsys: pytest.CaptureFixture[str], empty_url: str, sql_dir: Path
) -> None:
    database_url = empty_url  # only the folder's migrations: the list below is all of them
    write(
        sql_dir,
        "0004_broken",
        "CREATE TABLE half (id int);\n"
        "INSERT INTO half VALUES (1);\n"
        "ALTER TABLE nowhere ADD x int;\n",
        "DROP TABLE half;",
    )
    args = ("--database", database_url, "--dir", str(sql_dir))
    code, out, err = cli(capsys, "apply", *args)
    assert code == 1
    assert out.splitlines()[1:] == ["applied 0002_things", "applied 0003_thing_one"]  # committed
    assert err == (
        "error: migration 0004_broken.sql failed at statement 3 `ALTER TABLE nowhere ADD x int;`: "
        'relation "nowhere" does not exist (rolled back, not recorded)\n'
    )
    assert query(database_url, "SELECT to_regclass('half')") == [(None,)]
    assert cli(capsys, "list", *args)[1].splitlines()[1:] == [
        "applied  0002_things",
        "applied  0003_thing_one",
        "pending  0004_broken",
    ]


def test_broken_rollback_names_the_rollback_file(database_url: str, sql_dir: Path) -> None:
    write(sql_dir, "0004_table", "CREATE TABLE t4 (id int);", "DROP TABLE t4_typo;")
    with Runner(Target.parse(database_url), sql_dir) as runner:
        runner.apply()
        with pytest.raises(MigrationError) as failed:
            runner.rollback()
    assert str(failed.value) == (
        "rollback of 0004_table.rollback.sql failed at statement 1 `DROP TABLE t4_typo;`: "
        'table "t4_typo" does not exist (rolled back, not recorded)'
    )
    assert query(database_url, "SELECT to_regclass('t4') IS NOT NULL") == [(True,)]


def test_non_transactional_migration(
    capsys: pytest.CaptureFixture[str], database_url: str, sql_dir: Path
) -> None:
    write(
        sql_dir,
        "0004_index",
        "-- transactional: false\nCREATE INDEX CONCURRENTLY things_id ON things (id);\n",
        "DROP INDEX CONCURRENTLY things_id;",
    )
    args = ("--database", database_url, "--dir", str(sql_dir))
    assert cli(capsys, "apply", *args)[0] == 0
    assert query(database_url, "SELECT to_regclass('things_id') IS NOT NULL") == [(True,)]
    write(
        sql_dir,
        "0005_half",
        "-- transactional: false\n"
        "CREATE TABLE stays (id int);\n"
        "CREATE INDEX CONCURRENTLY x ON gone (id);\n",
    )
    code, _, err = cli(capsys, "apply", *args)
    assert code == 1
    assert err.startswith("error: migration 0005_half.sql failed at statement 2 ")
    assert err.endswith("(NOT transactional: earlier statements stay applied, not recorded)\n")
    assert query(database_url, "SELECT to_regclass('stays') IS NOT NULL") == [(True,)]
    assert cli(capsys, "rollback", *args)[1] == "rolled back 0004_index\n1 rolled back\n"


def test_edited_migration_is_refused_until_accepted(
    capsys: pytest.CaptureFixture[str], database_url: str, sql_dir: Path
) -> None:
    args = ("--database", database_url, "--dir", str(sql_dir))
    assert cli(capsys, "apply", *args)[0] == 0
    with (sql_dir / "0002_things.sql").open("a") as f:
        f.write("-- a comment added after it was applied\n")
    assert "changed  0002_things" in cli(capsys, "list", *args)[1].splitlines()
    write(sql_dir, "0004_more", "CREATE TABLE more (id int);", "DROP TABLE more;")
    code, out, err = cli(capsys, "apply", *args)
    assert (code, out) == (1, "")
    assert err == (
        "error: 0002_things.sql was edited after it was applied (checksum differs); restore it, "
        "or accept the new content: python -m service migrate accept 0002_things\n"
    )
    assert cli(capsys, "rollback", *args)[0] == 1
    assert query(database_url, "SELECT to_regclass('more')") == [(None,)]
    code, _, err = cli(capsys, "accept", "0004_more", *args)
    assert (code, err) == (1, "error: 0004_more is not applied; nothing to accept\n")
    code, _, err = cli(capsys, "accept", "0009_nope", *args)
    assert (code, err) == (1, f"error: no migration 0009_nope in {sql_dir}\n")
    assert cli(capsys, "accept", "0002_things", *args)[:2] == (0, "accepted 0002_things\n")
    assert cli(capsys, "apply", *args)[:2] == (0, "applied 0004_more\n1 applied\n")


# -- the lock ------------------------------------------------------------------------------


def test_lock_wait_is_bounded_and_names_the_holder(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("MIGRATE_LOCK_TIMEOUT", "0.2")
    with Runner(Target.parse(database_url), SHIPPED):
        code, out, err = cli(capsys, "apply", "--database", database_url)
        monkeypatch.setenv("MIGRATE_LOCK_TIMEOUT", "0")
        assert cli(capsys, "apply", "--database", database_url)[0] == 1
    assert (code, out) == (1, "")
    assert err.startswith("error: another migration run holds the lock (pid ")
    assert f"application_name 'service-migrate {os.uname().nodename}:{os.getpid()}'" in err
    assert err.endswith("gave up after MIGRATE_LOCK_TIMEOUT=0.2s\n")
    assert cli(capsys, "apply", "--database", database_url)[:2] == (0, "nothing to apply\n")


def test_stale_yoyo_lock_row_is_reported(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as con:
        con.execute(
            "INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, '2026-01-02 03:04:05', 4242)"
        )
    with pytest.raises(MigrationError) as failed:
        Runner(Target.parse(database_url), SHIPPED, lock_timeout=0).__enter__()
    assert str(failed.value) == (
        "yoyo's lock row is held by process 4242 since 2026-01-02 03:04:05 UTC (a plain "
        "`yoyo apply` running, or one that crashed: then run `yoyo break-lock`)"
    )


def test_a_session_holding_yoyo_lock_is_named_when_the_wait_runs_out(database_url: str) -> None:
    # E.g. a plain `yoyo break-lock` (a DELETE) left in an open transaction.
    with psycopg.connect(database_url, application_name="table-holder") as holder:
        holder.execute("LOCK TABLE yoyo_lock IN ROW EXCLUSIVE MODE")
        with pytest.raises(MigrationError) as failed:
            Runner(Target.parse(database_url), SHIPPED, lock_timeout=0.3).__enter__()
        pid = holder.info.backend_pid
    assert str(failed.value) == (
        f"yoyo_lock is locked by pid {pid} (application_name 'table-holder', idle in "
        "transaction); gave up after MIGRATE_LOCK_TIMEOUT"
    )
    with Runner(Target.parse(database_url), SHIPPED, lock_timeout=0.3) as runner:
        assert runner.apply(report=lambda line: None) == []  # and free again once it is gone


def test_concurrent_runners_apply_each_migration_once(empty_url: str, sql_dir: Path) -> None:
    write(
        sql_dir,
        "0004_slow",
        "CREATE TABLE slow (id int);\nDO $$ BEGIN PERFORM pg_sleep(0.3); END $$;\n",
        "DROP TABLE slow;",
    )
    # Non-transactional CREATE INDEX CONCURRENTLY waits for every older snapshot: a waiting
    # runner must not hold one (pg_advisory_lock blocking in a statement would deadlock).
    write(
        sql_dir,
        "0005_index",
        "-- transactional: false\nCREATE INDEX CONCURRENTLY slow_id ON slow (id);\n",
        "DROP INDEX CONCURRENTLY slow_id;",
    )
    runners = [migrate_process(empty_url, sql_dir, "apply") for _ in range(4)]
    results = [(r.wait(60), *r.communicate()) for r in runners]
    assert [code for code, _, _ in results] == [0] * 4, results
    lines = [line for _, out, _ in results for line in out.splitlines()]
    assert sorted(line for line in lines if line.startswith("applied ")) == [
        "applied 0001_baseline",
        "applied 0002_things",
        "applied 0003_thing_one",
        "applied 0004_slow",
        "applied 0005_index",
    ]
    for migration_id in ("0002_things", "0003_thing_one", "0004_slow", "0005_index"):
        assert apply_count(empty_url, migration_id) == 1
    assert query(empty_url, "SELECT count(*) FROM things") == [(1,)]


def _runner_in_a_long_migration(url: str, sql_dir: Path) -> subprocess.Popen[str]:
    """`migrate apply` in a subprocess, seen running 0004_long, a 10-minute statement."""
    write(
        sql_dir,
        "0004_long",
        "CREATE TABLE long_one (id int);\n"
        "DO $$ BEGIN PERFORM pg_sleep(coalesce(nullif("
        "current_setting('service_test.sleep', true), ''), '0')::float); END $$;\n",
        "DROP TABLE long_one;",
    )
    runner = migrate_process(url, sql_dir, "apply", PGOPTIONS="-c service_test.sleep=600")
    wait_until_seen(
        url,
        ACTIVITY + "state = 'active' AND query LIKE '%pg_sleep%' "
        "AND application_name LIKE 'service-migrate %'",
        runner,
    )
    return runner


def test_killed_runner_leaves_no_lock_and_the_next_applies_once(
    database_url: str, sql_dir: Path
) -> None:
    killed = _runner_in_a_long_migration(database_url, sql_dir)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    rerun = migrate_process(database_url, sql_dir, "apply")
    out, err = rerun.communicate(timeout=60)
    assert (rerun.returncode, err) == (0, "")
    # The killed runner committed 0002 and 0003 before 0004 began; 0004 died with it.
    assert out.splitlines()[1:] == ["applied 0004_long", "1 applied"]  # after `target …`
    assert apply_count(database_url, "0004_long") == 1
    assert query(database_url, "SELECT count(*) FROM yoyo_lock") == [(0,)]


# -- the plain yoyo CLI --------------------------------------------------------------------


def test_the_yoyo_internals_we_rely_on_are_there() -> None:
    """A yoyo upgrade that moves any of these fails here, by name (pyproject bounds yoyo)."""
    from yoyo import internalmigrations
    from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
    from yoyo.migrations import Migration, MigrationStep, TransactionWrapper
    from yoyo.utils import change_param_style

    backend_methods = [
        "init_database", "ensure_internal_schema_updated", "to_apply", "to_rollback",
        "transaction", "disable_transactions", "mark_one", "unmark_one", "log_migration",
        "lock", "connect",
        # apply --sql: yoyo's writes printed (offline.PrintingBackend)
        "execute", "begin", "commit", "rollback", "create_lock_table",
        "_internal_schema_updated", "_in_transaction",
    ]  # fmt: skip
    missing = [name for name in backend_methods if not hasattr(PostgresqlPsycopgBackend, name)]
    assert missing == []
    assert callable(internalmigrations.needs_upgrading) and callable(internalmigrations.upgrade)
    assert change_param_style("pyformat", "SELECT :a", {"a": 1}) == ("SELECT %(a)s", {"a": 1})
    for attribute in ("use_transactions", "steps", "load", "path", "id"):
        assert hasattr(Migration, attribute) or attribute in Migration.__init__.__code__.co_names
    step = MigrationStep(1, "SELECT 1", "SELECT 2")
    assert (step._apply, step._rollback) == ("SELECT 1", "SELECT 2")  # named in error lines
    assert TransactionWrapper(step).step is step


def test_plain_yoyo_cli_on_the_same_tables(
    capsys: pytest.CaptureFixture[str], empty_url: str, sql_dir: Path
) -> None:
    yoyo = Path(sys.executable).parent / "yoyo"
    yoyo_url = empty_url.replace("postgresql://", "postgresql+psycopg://", 1)
    env = subprocess_env()

    def plain(*argv: str) -> str:
        done = subprocess.run(
            [str(yoyo), *argv, "--database", yoyo_url, str(sql_dir)],
            env=env,
            cwd=sql_dir,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    (sql_dir / "0003_thing_one.sql").rename(sql_dir / "later.txt")
    plain("apply", "--batch")
    (sql_dir / "later.txt").rename(sql_dir / "0003_thing_one.sql")
    args = ("--database", empty_url, "--dir", str(sql_dir))
    assert cli(capsys, "list", *args)[1] == (
        "applied  0001_baseline\napplied  0002_things\npending  0003_thing_one\n"
    )
    assert cli(capsys, "apply", *args)[1] == "applied 0003_thing_one\n1 applied\n"
    # Adopted: their checksums are recorded now, so an edit is caught like any other.
    recorded = query(empty_url, "SELECT migration_id FROM service_migration_checksums ORDER BY 1")
    assert recorded == [("0001_baseline",), ("0002_things",), ("0003_thing_one",)]
    status = [line.split()[:2] for line in plain("list").splitlines()[2:]]
    assert status == [["A", "0001_baseline"], ["A", "0002_things"], ["A", "0003_thing_one"]]
    plain("rollback", "--batch", "--all")
    assert cli(capsys, "list", *args)[1].count("pending") == 3


def test_plain_yoyo_waits_for_our_run(empty_url: str, sql_dir: Path) -> None:
    yoyo = Path(sys.executable).parent / "yoyo"
    yoyo_url = empty_url.replace("postgresql://", "postgresql+psycopg://", 1)
    with Runner(Target.parse(empty_url), sql_dir) as runner:
        plain = subprocess.Popen(
            [str(yoyo), "apply", "--batch", "--database", yoyo_url, str(sql_dir)],
            env=subprocess_env(),
            cwd=sql_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until_seen(
            empty_url,
            ACTIVITY + "wait_event_type = 'Lock' AND query LIKE '%INSERT INTO \"yoyo_lock\"%'",
            plain,
        )
        assert runner.apply(report=lambda line: None) == [m.id for m in runner.migrations]
    assert plain.wait(60) == 0, plain.communicate()
    plain.communicate()
    assert apply_count(empty_url, "0002_things") == 1


GUARD = (
    "SELECT state, backend_xid, backend_xmin FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name LIKE 'service-migrate-guard %'"
)


def not_removable(url: str, table: str) -> int:
    """VACUUM (VERBOSE) `table`: how many dead rows it had to keep ("not yet removable")."""
    notices: list[str] = []
    with psycopg.connect(url, autocommit=True) as con:
        con.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        con.execute(f"VACUUM (VERBOSE) {table}")
    counts = re.findall(r"(\d+) are dead but not yet removable", "\n".join(notices))
    assert counts, notices
    return int(counts[0])


def test_the_guard_holds_no_transaction_id_and_no_snapshot(
    database_url: str, sql_dir: Path
) -> None:
    # The server's defaults at their most hostile: the guard must outlive an idle-in-
    # transaction timeout and keep no snapshot under REPEATABLE READ.
    with psycopg.connect(database_url, autocommit=True) as con:
        name = con.execute("SELECT current_database()").fetchone()[0]
        for setting, value in (
            ("idle_in_transaction_session_timeout", "200ms"),
            ("default_transaction_isolation", "repeatable read"),
        ):
            con.execute(
                psycopg.sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    psycopg.sql.Identifier(name),
                    psycopg.sql.Identifier(setting),
                    psycopg.sql.Literal(value),
                )
            )
    with Runner(Target.parse(database_url), sql_dir) as runner:
        runner.apply(report=lambda line: None)
        with psycopg.connect(database_url, autocommit=True) as con:
            con.execute("INSERT INTO things SELECT generate_series(2, 1001)")
            con.execute("UPDATE things SET id = -id")  # 1000 dead rows once it commits
        time.sleep(0.5)  # past the idle-in-transaction timeout
        assert query(database_url, GUARD) == [("idle in transaction", None, None)]
        assert not_removable(database_url, "things") == 0
        with psycopg.connect(database_url, autocommit=True) as con:
            con.execute("SET lock_timeout = '100ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):  # what plain yoyo does
                con.execute("INSERT INTO yoyo_lock (locked, ctime, pid) VALUES (1, now(), 1)")
    assert query(database_url, GUARD) == []
    assert query(database_url, "SELECT count(*) FROM yoyo_lock") == [(0,)]


def test_plain_yoyo_waits_for_a_runner_and_goes_on_when_it_is_killed(
    database_url: str, sql_dir: Path
) -> None:
    yoyo = Path(sys.executable).parent / "yoyo"
    killed = _runner_in_a_long_migration(database_url, sql_dir)
    plain = subprocess.Popen(
        [str(yoyo), "apply", "--batch", "--database",
         database_url.replace("postgresql://", "postgresql+psycopg://", 1), str(sql_dir)],
        env=subprocess_env(), cwd=sql_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_until_seen(
        database_url,
        ACTIVITY + "wait_event_type = 'Lock' AND query LIKE '%INSERT INTO \"yoyo_lock\"%'",
        plain,
    )
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert plain.wait(60) == 0, plain.communicate()
    plain.communicate()
    assert apply_count(database_url, "0004_long") == 1  # by plain yoyo, once
    assert query(database_url, "SELECT count(*) FROM yoyo_lock") == [(0,)]


# -- batched backfills: the file docs/migrations.md shows ----------------------------------

BACKFILL = "0004_orders_total_cents_backfill"
GATE_KEY = 4242  # an advisory lock the test holds to stop the backfill at one batch


def test_the_documented_backfill_survives_a_killed_runner(empty_url: str, sql_dir: Path) -> None:
    database_url = empty_url  # its own folder on an empty database: sql/ may hold an orders table
    write(
        sql_dir,
        "0002_orders",
        "CREATE TABLE orders (id bigint PRIMARY KEY, total bigint NOT NULL);\n"
        "INSERT INTO orders SELECT g, g % 1000 FROM generate_series(1, 200000) AS g;\n",
    )
    write(sql_dir, "0003_orders_total_cents", "ALTER TABLE orders ADD COLUMN total_cents bigint;")
    for name in ("0002_things.sql", "0003_thing_one.sql"):
        (sql_dir / name).unlink()
    with Runner(Target.parse(database_url), sql_dir) as runner:
        runner.apply(report=lambda line: None)
    with psycopg.connect(database_url, autocommit=True) as con:
        # Every row a committed UPDATE touched, once per time (a statement trigger); and a
        # gate: the first row of the 11th batch waits for an advisory lock the test holds.
        con.execute("CREATE TABLE touched (id bigint NOT NULL)")
        con.execute(
            "CREATE FUNCTION log_touched() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO touched SELECT id FROM changed; RETURN NULL; END $$"
        )
        con.execute(
            "CREATE TRIGGER touched AFTER UPDATE ON orders REFERENCING NEW TABLE AS changed "
            "FOR EACH STATEMENT EXECUTE FUNCTION log_touched()"
        )
        con.execute(
            "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_advisory_xact_lock_shared({GATE_KEY}); RETURN NEW; END $$"
        )
        con.execute(
            "CREATE TRIGGER gate BEFORE UPDATE ON orders FOR EACH ROW "
            "WHEN (OLD.id = 100001) EXECUTE FUNCTION gate()"
        )
    write(sql_dir, BACKFILL, documented_sql(f"{BACKFILL}.sql"),
          documented_sql(f"{BACKFILL}.rollback.sql"))  # fmt: skip

    with psycopg.connect(database_url, autocommit=True, application_name="backfill-gate") as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE_KEY,))
        gate_pid = gate.info.backend_pid
        killed = migrate_process(
            database_url, sql_dir, "apply", MIGRATE_STATEMENT_LOCK_TIMEOUT="0.2"
        )
        retries: list[str] = []
        reader = threading.Thread(target=lambda: retries.extend(killed.stderr or ()))
        reader.start()

        def stopped_at_the_gate() -> bool:
            assert killed.poll() is None, killed.communicate()
            progress = "SELECT last_id FROM backfill_progress"
            ready = query(database_url, "SELECT to_regclass('backfill_progress')")[0][0]
            return bool(ready and query(database_url, progress) == [(100000,)] and retries)

        wait_until(stopped_at_the_gate, "the backfill retrying at the 11th batch")
        # The committed batches' old row versions are VACUUM's to remove: the run holds no
        # transaction id and no snapshot (with the old guard: 100000 kept).
        assert not_removable(database_url, "orders") == 0
        killed.send_signal(signal.SIGKILL)
        reader.join(60)
        killed.communicate()  # closes the pipes
    assert retries[0].startswith(
        f"retry: {BACKFILL}.sql statement 4: lock_timeout 0.2s ran out, blocked by pid "
        f"{gate_pid} (application_name 'backfill-gate', "
    ), retries
    assert query(database_url, "SELECT count(*) FROM touched") == [(100000,)]

    rerun = migrate_process(database_url, sql_dir, "apply")
    out, err = rerun.communicate(timeout=60)
    target = f"target {DatabaseURL.parse(database_url).redacted}\n"
    assert (rerun.returncode, out, err) == (0, f"{target}applied {BACKFILL}\n1 applied\n", "")
    assert query(database_url, "SELECT count(*), count(DISTINCT id) FROM touched") == [
        (200000, 200000)
    ]
    assert query(
        database_url, "SELECT count(*) FROM orders WHERE total_cents IS DISTINCT FROM total * 100"
    ) == [(0,)]
    assert query(
        database_url,
        "SELECT last_id, rows_done, finished_at IS NOT NULL FROM backfill_progress",
    ) == [(200000, 200000, True)]
    assert apply_count(database_url, BACKFILL) == 1
    assert query(database_url, "SELECT to_regproc('backfill_orders_total_cents')") == [(None,)]


# -- service start-up ----------------------------------------------------------------------


async def test_startup_logs_counts_and_migrates_when_asked(
    caplog: pytest.LogCaptureFixture, empty_url: str
) -> None:
    caplog.set_level(logging.INFO, logger="service.migrations")
    app = create_app(test_settings(empty_url))
    async with running(app) as client:
        assert await app.state.lifespan_state["db"].wait_connected(10)
        assert (await client.get("/api/v1/ready")).status_code == 200
    shipped = len(shipped_ids())
    assert f"migrations.status applied=0 pending={shipped} changed=0 missing=0" in caplog.messages
    assert query(empty_url, "SELECT to_regclass('_yoyo_migration')") == [(None,)]

    caplog.clear()
    app = create_app(test_settings(empty_url, migrate_on_startup=True))
    async with running(app) as client:
        assert await app.state.lifespan_state["db"].wait_connected(10)
        assert (await client.get("/api/v1/ready")).status_code == 200
    assert caplog.messages[-2:] == [
        f"migrations.applied_on_startup count={shipped}",
        f"migrations.status applied={shipped} pending=0 changed=0 missing=0",
    ]
    assert apply_count(empty_url, "0001_baseline") == 1


@pytest.mark.fault
async def test_migrate_on_startup_waits_for_a_database_that_is_down(owned_cluster: Any) -> None:
    owned_cluster.stop()
    app = create_app(test_settings(owned_cluster.url(), migrate_on_startup=True))
    async with running(app) as client:
        assert (await client.get("/api/v1/ready")).status_code == 503
        assert (await client.get("/api/v1/health")).status_code == 200
        owned_cluster.start()
        assert await app.state.lifespan_state["db"].wait_connected(30)
        assert (await client.get("/api/v1/ready")).status_code == 200
    assert apply_count(owned_cluster.url(), "0001_baseline") == 1
