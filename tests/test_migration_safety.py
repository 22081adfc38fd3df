"""Migrations on a live database, on real PostgreSQL: lock waits, timeouts, indexes, lint."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.migrations import Runner, Target, safety
from service.migrations.safety import Timeouts
from service.migrations.scaffold import new
from service.testing.polling import wait_until
from tests.support.migrations import SHIPPED, cli, documented_sql, query, with_baseline, write

ROOT = Path(__file__).resolve().parent.parent
LOCK_TIMEOUT = 0.2  # short, so that the suite stays fast; the bounds below derive from it
SQUAWK = Path(sys.executable).parent / "squawk"


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """The runner's own database here: nothing applied, whatever sql/ holds (a feature's
    `orders` table, say)."""
    return empty_database_url


@pytest.fixture
def live_dir(tmp_path: Path, database_url: str) -> Path:
    """Baseline and an `orders` table with rows, applied; the test adds what it runs."""
    directory = with_baseline(tmp_path / "sql")
    write(
        directory,
        "0002_orders",
        "CREATE TABLE orders (id bigint PRIMARY KEY, total bigint NOT NULL);\n"
        "INSERT INTO orders SELECT g, g % 10 FROM generate_series(1, 100) AS g;\n",
        "DROP TABLE orders;",
    )
    with Runner(Target.parse(database_url), directory) as runner:
        runner.apply(report=lambda line: None)
    return directory


@pytest.fixture
def blocker(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A session reading `orders` in an open transaction: it holds ACCESS SHARE until rollback.

    It gives up after 30 s at most, so that a runner which waits for it without limit makes
    the test fail rather than hang.
    """
    with psycopg.connect(database_url, application_name="nightly-report") as con:
        con.execute("SELECT count(*) FROM orders")
        safety_net = threading.Timer(30, con.rollback)
        safety_net.start()
        yield con
        safety_net.cancel()
        con.rollback()


def applying(
    database_url: str, directory: Path, timeouts: Timeouts
) -> tuple[threading.Thread, list[str], list[Any]]:
    """A thread (not started) applying `directory` with `timeouts`; the lock retries it
    reports, and its outcome: the ids applied, or the exception."""
    retries: list[str] = []
    outcome: list[Any] = []

    def migrate() -> None:
        try:
            with Runner(Target.parse(database_url), directory, timeouts=timeouts,
                        on_retry=retries.append) as runner:  # fmt: skip
                outcome.append(runner.apply(report=lambda line: None))
        except BaseException as exc:  # reported by the test's assertion
            outcome.append(exc)

    return threading.Thread(target=migrate), retries, outcome


ADD_NOTE = ("0003_orders_note", "ALTER TABLE orders ADD COLUMN note text;\n")


# -- short lock waits, retried --------------------------------------------------------------


def test_blocked_migration_lets_queries_through_and_applies_when_the_blocker_leaves(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    live_dir: Path,
    blocker: psycopg.Connection[Any],
) -> None:
    write(live_dir, *ADD_NOTE, "ALTER TABLE orders DROP COLUMN note;")
    timeouts = Timeouts(lock_timeout=LOCK_TIMEOUT, retry_budget=60)
    runner, retries, outcome = applying(database_url, live_dir, timeouts)

    # A third session keeps reading the table and records its longest wait.
    longest = [0.0]
    reads = [0]
    stop_reading = threading.Event()

    def read() -> None:
        with psycopg.connect(database_url, autocommit=True) as con:
            while not stop_reading.is_set():
                started = time.monotonic()
                con.execute("SELECT count(*) FROM orders")
                longest[0] = max(longest[0], time.monotonic() - started)
                reads[0] += 1
                time.sleep(0.01)

    reader = threading.Thread(target=read)
    blocked_since = time.monotonic()
    reader.start()
    runner.start()
    try:
        wait_until(lambda: len(retries) >= 2, "two retries")
        # `migrate list` takes no lock: it answers while the run retries.
        code, out, _ = cli(capsys, "list", "--database", database_url, "--dir", str(live_dir))
        assert (code, out.splitlines()[-1]) == (0, "pending  0003_orders_note")
        # Held long enough that a reader queued behind the migration would break the bound.
        wait_until(lambda: time.monotonic() - blocked_since > 1.6, "the blocker's 1.6 s")
    finally:
        blocker.rollback()
        runner.join(60)
        stop_reading.set()
        reader.join(10)
    assert outcome == [["0003_orders_note"]]
    assert query(database_url, "SELECT count(note) FROM orders") == [(0,)]
    assert reads[0] > 10
    assert longest[0] < 3 * LOCK_TIMEOUT + 0.5, f"a read waited {longest[0]:.2f}s"
    pid = blocker.info.backend_pid
    pattern = (
        rf"0003_orders_note\.sql statement 1: lock_timeout 0\.2s ran out, blocked by pid {pid} "
        r"\(application_name 'nightly-report', idle in transaction, transaction open "
        r"\d+\.\ds\); attempt (\d+) in \d+\.\ds"
    )
    attempts = [re.fullmatch(pattern, line) for line in retries]
    assert all(attempts), retries
    assert [int(m.group(1)) for m in attempts if m] == list(range(2, len(retries) + 2))


def test_retry_budget_runs_out_with_one_line_naming_the_blocker(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    live_dir: Path,
    blocker: psycopg.Connection[Any],
) -> None:
    write(live_dir, *ADD_NOTE, "ALTER TABLE orders DROP COLUMN note;")
    monkeypatch.setenv("MIGRATE_STATEMENT_LOCK_TIMEOUT", str(LOCK_TIMEOUT))
    monkeypatch.setenv("MIGRATE_LOCK_RETRY_BUDGET", "1")
    args = ("--database", database_url, "--dir", str(live_dir))
    code, out, err = cli(capsys, "apply", *args)
    assert (code, out) == (1, "")
    *retried, last = err.splitlines()
    pid = blocker.info.backend_pid
    assert retried and all(
        line.startswith(
            f"retry: 0003_orders_note.sql statement 1: lock_timeout 0.2s ran out, "
            f"blocked by pid {pid} (application_name 'nightly-report', "
        )  # fmt: skip
        for line in retried
    ), retried
    assert re.fullmatch(
        rf"error: migration 0003_orders_note\.sql gave up waiting for a lock after "
        rf"{len(retried) + 1} attempts, blocked \d+\.\ds \(MIGRATE_LOCK_RETRY_BUDGET=1s\): "
        rf"statement 1 `ALTER TABLE orders ADD COLUMN note text;` was blocked by pid {pid} "
        r"\(application_name 'nightly-report', idle in transaction, transaction open "
        r"\d+\.\ds\) \(rolled back, not recorded\)",
        last,
    ), last
    assert query(database_url, "SELECT count(*) FROM information_schema.columns "
                 "WHERE table_name = 'orders' AND column_name = 'note'") == [(0,)]  # fmt: skip
    assert cli(capsys, "list", *args)[1].splitlines()[-1] == "pending  0003_orders_note"


def test_the_retry_budget_counts_time_blocked_not_time_running(
    database_url: str, live_dir: Path, blocker: psycopg.Connection[Any]
) -> None:
    # Statement 1 runs longer than the whole budget; statement 2 then meets the blocker.
    write(
        live_dir,
        "0003_long_then_blocked",
        "-- transactional: false\nDO $$ BEGIN PERFORM pg_sleep(1.2); END $$;\n"
        "ALTER TABLE orders ADD COLUMN note text;\n",
        "ALTER TABLE orders DROP COLUMN note;",
    )
    timeouts = Timeouts(lock_timeout=LOCK_TIMEOUT, retry_budget=1)
    runner, retries, outcome = applying(database_url, live_dir, timeouts)

    runner.start()
    try:
        wait_until(lambda: retries or outcome, "a retry")
    finally:
        blocker.rollback()
        runner.join(60)
    assert outcome == [["0003_long_then_blocked"]]
    assert retries[0].startswith("0003_long_then_blocked.sql statement 2: lock_timeout 0.2s ")


# -- statement timeout ----------------------------------------------------------------------


def test_statement_timeout_and_the_header_override(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    live_dir: Path,
) -> None:
    monkeypatch.setenv("MIGRATE_STATEMENT_LOCK_TIMEOUT", "0.3")
    monkeypatch.setenv("MIGRATE_STATEMENT_TIMEOUT", "0.2")
    args = ("--database", database_url, "--dir", str(live_dir))
    slow = "DO $$ BEGIN PERFORM pg_sleep(0.6); END $$;\n"
    seen = (
        "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock_timeout, "
        "current_setting('statement_timeout') AS statement_timeout;\n"
    )
    write(live_dir, "0003_backfill", seen + slow, "DROP TABLE seen;")
    code, out, err = cli(capsys, "apply", *args)
    assert (code, out) == (1, "")
    assert err == (
        "error: migration 0003_backfill.sql failed at statement 2 "
        "`DO $$ BEGIN PERFORM pg_sleep(0.6); END $$;`: canceling statement due to statement "
        "timeout after 0.2s (MIGRATE_STATEMENT_TIMEOUT, or `-- statement_timeout: SECONDS` in "
        "the file's header) (rolled back, not recorded)\n"
    )
    write(live_dir, "0003_backfill", "-- statement_timeout: 30\n" + seen + slow, "DROP TABLE seen;")
    assert cli(capsys, "apply", *args)[:2] == (0, "applied 0003_backfill\n1 applied\n")
    assert query(database_url, "SELECT * FROM seen") == [("300ms", "30s")]

    # A non-transactional file honours both timeouts too.
    write(
        live_dir,
        "0004_outside",
        "-- transactional: false\n-- lock_timeout: off\n"
        "CREATE TABLE seen_outside AS SELECT current_setting('lock_timeout') AS lock_timeout, "
        "current_setting('statement_timeout') AS statement_timeout;\n" + slow,
        "DROP TABLE seen_outside;",
    )
    code, _, err = cli(capsys, "apply", *args)
    assert code == 1 and "canceling statement due to statement timeout after 0.2s" in err
    assert err.endswith("(NOT transactional: earlier statements stay applied, not recorded)\n")
    assert query(database_url, "SELECT * FROM seen_outside") == [("0", "200ms")]
    # ... and the runner's session is back to the server's settings afterwards.
    write(live_dir, "0004_outside", "-- transactional: false\nDROP TABLE seen_outside;\n")
    with Runner(Target.parse(database_url), live_dir) as runner:
        assert runner.apply(report=lambda line: None) == ["0004_outside"]
        settings = "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        assert runner.con.execute(settings).fetchone() == ("0", "0")


def test_a_call_cancelled_by_the_statement_timeout_says_what_a_backfill_needs(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    live_dir: Path,
) -> None:
    # Each batch (0.1 s) is well inside the timeout; the CALL as a whole is not: COMMIT
    # inside a procedure does not re-arm statement_timeout.
    monkeypatch.setenv("MIGRATE_STATEMENT_TIMEOUT", "0.3")
    write(
        live_dir,
        "0003_batches",
        "-- transactional: false\n"
        "CREATE PROCEDURE batches() LANGUAGE plpgsql AS $$ BEGIN FOR i IN 1..8 LOOP "
        "PERFORM pg_sleep(0.1); COMMIT; END LOOP; END $$;\nCALL batches();\n",
    )
    code, out, err = cli(capsys, "apply", "--database", database_url, "--dir", str(live_dir))
    assert (code, out) == (1, "")
    assert err == (
        "error: migration 0003_batches.sql failed at statement 2 `CALL batches();`: canceling "
        "statement due to statement timeout after 0.3s (MIGRATE_STATEMENT_TIMEOUT, or "
        "`-- statement_timeout: SECONDS` in the file's header); the whole CALL is one "
        "statement, its batches included: a batched backfill needs `-- statement_timeout: off` "
        "(or a bound on the whole job), and the rerun resumes after its committed batches "
        "(NOT transactional: earlier statements stay applied, not recorded)\n"
    )


def test_header_overrides_and_what_the_session_gets(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "0002_backfill.sql"
    path.write_text(
        "-- 0002_backfill\n-- transactional: false\n\n-- statement_timeout: 3600\n"
        "--lock_timeout:off\nUPDATE t SET x = 1;\n-- statement_timeout: 1\n"
    )
    assert Timeouts().for_file(path) == Timeouts(lock_timeout=0, statement_timeout=3600)
    with psycopg.connect(database_url, autocommit=True) as con:
        # 0 means "no limit" to PostgreSQL: a tiny positive limit must not become that.
        Timeouts(lock_timeout=0.0001, statement_timeout=0).apply(con, local=False)
        settings = "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
        assert con.execute(settings).fetchone() == ("1ms", "0")
        safety.reset(con)
        assert con.execute(settings).fetchone() == ("0", "0")


def test_a_bad_header_or_setting_is_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    live_dir: Path,
) -> None:
    write(live_dir, "0003_soon", "-- statement_timeout: soon\nSELECT 1;\n")
    args = ("--database", database_url, "--dir", str(live_dir))
    assert cli(capsys, "apply", *args) == (
        1,
        "",
        "error: 0003_soon.sql: `-- statement_timeout: soon` is not a number of seconds or off\n",
    )
    monkeypatch.setenv("MIGRATE_LOCK_RETRY_BUDGET", "-1")
    assert cli(capsys, "apply", *args) == (
        2,
        "",
        "error: MIGRATE_LOCK_RETRY_BUDGET: '-1' is out of range (seconds, must be >= 0)\n",
    )


# -- CREATE INDEX CONCURRENTLY --------------------------------------------------------------


UNIQUE_TOTAL = (
    "0003_orders_total",
    "-- transactional: false\nCREATE UNIQUE INDEX CONCURRENTLY orders_total ON orders (total);\n",
    "-- transactional: false\nDROP INDEX CONCURRENTLY orders_total;\n",
)


def test_failed_concurrent_index_is_dropped_and_the_rerun_works(
    capsys: pytest.CaptureFixture[str], database_url: str, live_dir: Path
) -> None:
    write(live_dir, *UNIQUE_TOTAL)
    args = ("--database", database_url, "--dir", str(live_dir))
    code, out, err = cli(capsys, "apply", *args)
    assert (code, out) == (1, "")
    assert err == (
        "error: migration 0003_orders_total.sql failed at statement 1 `CREATE UNIQUE INDEX "
        "CONCURRENTLY orders_total ON orders (total);`: could not create unique index "
        '"orders_total" (NOT transactional: earlier statements stay applied, not recorded; '
        "the INVALID index orders_total it left was dropped)\n"
    )
    assert query(database_url, "SELECT to_regclass('orders_total')") == [(None,)]
    with psycopg.connect(database_url, autocommit=True) as con:
        con.execute("UPDATE orders SET total = id")  # the data fixed
    assert cli(capsys, "apply", *args)[:2] == (0, "applied 0003_orders_total\n1 applied\n")
    assert query(
        database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_total'::regclass"
    ) == [(True,)]


def test_an_invalid_index_the_statement_did_not_build_is_left_alone(
    capsys: pytest.CaptureFixture[str], database_url: str, live_dir: Path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as con:  # an interrupted earlier build
        with pytest.raises(psycopg.errors.UniqueViolation):
            con.execute("CREATE UNIQUE INDEX CONCURRENTLY orders_total ON orders (total)")
    write(live_dir, *UNIQUE_TOTAL)
    code, _, err = cli(capsys, "apply", "--database", database_url, "--dir", str(live_dir))
    assert code == 1
    assert err.endswith(
        "; an INVALID index orders_total was already there (an interrupted run?): "
        "DROP INDEX CONCURRENTLY orders_total, then apply again)\n"
    )
    assert query(
        database_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_total'::regclass"
    ) == [(False,)]


def test_concurrent_index_waiting_on_an_old_snapshot_is_dropped_and_retried(
    caplog: pytest.LogCaptureFixture, database_url: str, live_dir: Path
) -> None:
    write(live_dir, "0003_orders_by_total", "-- transactional: false\n"
          "CREATE INDEX CONCURRENTLY orders_by_total ON orders (total);\n")  # fmt: skip
    caplog.set_level(logging.WARNING, logger="service.migrations")
    timeouts = Timeouts(lock_timeout=LOCK_TIMEOUT, retry_budget=60)
    with psycopg.connect(database_url, application_name="pg_dump") as snapshot:
        snapshot.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        snapshot.execute("SELECT 1")  # the build waits for every older snapshot to go
        pid = snapshot.info.backend_pid
        with Runner(Target.parse(database_url), live_dir, timeouts=timeouts) as runner:
            done: list[list[str]] = []
            thread = threading.Thread(target=lambda: done.append(runner.apply(lambda _: None)))
            thread.start()
            wait_until(lambda: len(caplog.messages) >= 2, "two retries")
            assert query(database_url, "SELECT to_regclass('orders_by_total')") in (
                [(None,)],  # dropped before the pause ...
                [("orders_by_total",)],  # ... or the next attempt is building it
            )
            snapshot.rollback()
            thread.join(60)
    assert done == [["0003_orders_by_total"]]
    assert all(
        line.startswith(
            "migrations.lock_retry 0003_orders_by_total.sql statement 1: lock_timeout "
            f"0.2s ran out, blocked by pid {pid} (application_name 'pg_dump', "
        )  # fmt: skip
        for line in caplog.messages
    ), caplog.messages
    assert query(
        database_url,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_by_total'::regclass",
    ) == [(True,)]


@pytest.mark.parametrize(
    ("statement", "name"),
    [
        ("CREATE INDEX CONCURRENTLY a ON t (x)", "a"),
        ("create unique index concurrently if not exists s.b_1 on s.t (x)", "s.b_1"),
        ('-- why\nCREATE INDEX CONCURRENTLY "Odd ""name""" ON t (x);', '"Odd ""name"""'),
        ("/* c */ CREATE UNIQUE INDEX\n  CONCURRENTLY c\n  ON t USING btree (x)", "c"),
        ("CREATE INDEX CONCURRENTLY ON t (x)", None),
        ("CREATE INDEX d ON t (x)", None),
        ("DROP INDEX CONCURRENTLY e", None),
    ],
)
def test_concurrent_index_name(statement: str, name: str | None) -> None:
    assert safety.concurrent_index_name(statement) == name


# -- the lint -------------------------------------------------------------------------------


def squawk(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SQUAWK), "--config", str(ROOT / ".squawk.toml"), "--reporter", "gcc",
         *map(str, paths)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_squawk_passes_the_shipped_sql_and_the_new_template(tmp_path: Path) -> None:
    assert squawk(*sorted(SHIPPED.glob("*.sql"))).returncode == 0
    forward, backward = new("add_users", tmp_path)
    with forward.open("a") as f:
        f.write("CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);\n")
    with backward.open("a") as f:
        f.write("DROP TABLE users;\n")
    linted = squawk(forward, backward)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_squawk_passes_the_documented_backfill(tmp_path: Path) -> None:
    paths = []
    for name in ("0004_orders_total_cents_backfill.sql",
                 "0004_orders_total_cents_backfill.rollback.sql"):  # fmt: skip
        paths.append(tmp_path / name)
        paths[-1].write_text(documented_sql(name))
    linted = squawk(*paths)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_squawk_finds_a_locking_statement_until_it_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "0002_users_email.sql"
    path.write_text("CREATE INDEX users_email ON users (email);\n")
    linted = squawk(path)
    assert linted.returncode == 1 and "require-concurrent-index-creation" in linted.stdout
    path.write_text(
        "-- users is created empty in the same release; no one reads it yet\n"
        "-- squawk-ignore require-concurrent-index-creation\n"
        "CREATE INDEX users_email ON users (email);\n"
    )
    linted = squawk(path)
    assert linted.returncode == 0, linted.stdout
