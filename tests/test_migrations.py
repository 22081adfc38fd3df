"""Migrations against real PostgreSQL: the command, the lock, checksums, failures, yoyo's CLI."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service import create_app, migrations
from service.migrations import MigrationError, Runner, Target
from service.migrations.scaffold import new
from tests.support.apps import running, test_settings
from tests.support.cluster import free_port
from tests.support.migrations import SHIPPED, cli, query, shipped_ids, with_baseline, write
from tests.support.polling import wait_until
from tests.support.servers import Server

ROOT = Path(__file__).resolve().parent.parent
BOOKKEEPING = ("_yoyo_", "yoyo_lock", "service_migration_checksums")

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
    assert (code, out) == (1, "")
    assert err == (
        f"error: cannot connect to postgresql://app:***@127.0.0.1:{port}/app: connection to "
        f'server at "127.0.0.1", port {port} failed: Connection refused\n'
    )
    info = psycopg.conninfo.conninfo_to_dict(server.admin_url)
    refused = f"postgresql://nobody:Sup3rSecret@{info['host']}:{info['port']}/no_such_db"
    code, _, err = cli(capsys, "list", "--database", refused)
    assert code == 1 and err.count("\n") == 1
    assert "nobody" in err and "***" in err
    assert "Sup3rSecret" not in out + err


def test_a_database_error_mid_run_is_one_line(
    capsys: pytest.CaptureFixture[str], server: Server, empty_url: str
) -> None:
    role = "svc_test_ro_" + uuid.uuid4().hex[:8]
    with server.admin() as con:
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'Sup3rSecret'")
    with psycopg.connect(empty_url, autocommit=True) as con:
        con.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # the default before PG 15
    try:
        info = psycopg.conninfo.conninfo_to_dict(empty_url)
        url = f"postgresql://{role}:Sup3rSecret@{info['host']}:{info['port']}/{info['dbname']}"
        code, out, err = cli(capsys, "apply", "--database", url, "--dir", str(SHIPPED))
    finally:
        with server.admin() as con:
            con.execute(f"DROP ROLE {role}")
    assert (code, out) == (1, "")
    redacted = f"postgresql://{role}:***@{info['host']}:{info['port']}/{info['dbname']}"
    assert err == f"error: {redacted}: permission denied for schema public\n"


def test_bad_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "list", "--database", "mysql://root@db/app")
    assert code == 2 and err.startswith("error: --database: scheme 'mysql' is not PostgreSQL")


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


def test_killed_runner_leaves_no_lock_and_the_next_applies_once(
    database_url: str, sql_dir: Path
) -> None:
    write(
        sql_dir,
        "0004_long",
        "CREATE TABLE long_one (id int);\n"
        "DO $$ BEGIN PERFORM pg_sleep(coalesce(nullif("
        "current_setting('service_test.sleep', true), ''), '0')::float); END $$;\n",
        "DROP TABLE long_one;",
    )
    killed = migrate_process(database_url, sql_dir, "apply", PGOPTIONS="-c service_test.sleep=600")
    wait_until_seen(
        database_url,
        "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%' "
        "AND application_name LIKE 'service-migrate%'",
        killed,
    )
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
    from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
    from yoyo.migrations import Migration, MigrationStep, TransactionWrapper

    backend_methods = [
        "init_database", "ensure_internal_schema_updated", "to_apply", "to_rollback",
        "transaction", "disable_transactions", "mark_one", "unmark_one", "log_migration",
        "lock", "connect",
    ]  # fmt: skip
    missing = [name for name in backend_methods if not hasattr(PostgresqlPsycopgBackend, name)]
    assert missing == []
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
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%INSERT INTO \"yoyo_lock\"%'",
            plain,
        )
        assert runner.apply(report=lambda line: None) == [m.id for m in runner.migrations]
    assert plain.wait(60) == 0, plain.communicate()
    plain.communicate()
    assert apply_count(empty_url, "0002_things") == 1


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
