"""Migrations on a live database: short lock waits, retried; statement timeouts; no INVALID index.

PostgreSQL grants table locks first come, first served: a migration queued for ACCESS
EXCLUSIVE behind a long read makes every later query on that table queue behind it. So
each migration runs with a short `lock_timeout`; when it runs out, the migration's
transaction is rolled back and the migration tried again after a pause with backoff and
jitter, until a total budget is spent (GitLab's `with_lock_retries`). Each retry names the
session that blocked it, seen from a second connection while the statement waited.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors, sql

from ..backoff import Backoff
from ..settings import Settings

# Pauses between attempts (service/backoff.py): 0.25 s doubling to 5 s, each +-20 %, so
# that runners blocked by the same session do not all come back at the same instant.
FIRST_PAUSE = 0.25
MAX_PAUSE = 5.0

BLOCKERS_QUERY = """
SELECT pid, application_name, state, xact_start, backend_start, now()
FROM pg_stat_activity
WHERE pid = ANY(pg_blocking_pids(%s))
ORDER BY coalesce(xact_start, backend_start), pid"""
INVALID_INDEX_QUERY = """
SELECT n.nspname, c.relname
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE i.indexrelid = to_regclass(%s) AND NOT i.indisvalid"""

_HEADER = re.compile(r"^\s*--\s*(lock_timeout|statement_timeout)\s*:\s*(.*?)\s*$")
_COMMENT_OR_BLANK = re.compile(r"^\s*(--.*)?$")
_LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)'
_CONCURRENT_INDEX = re.compile(
    rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"({_IDENT}(?:\s*\.\s*{_IDENT})?)\s+ON\s",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Timeouts:
    """How long a migration's statements may wait for locks and run (seconds, 0 = no limit)."""

    lock_timeout: float = 1.0  # MIGRATE_STATEMENT_LOCK_TIMEOUT
    retry_budget: float = 180.0  # MIGRATE_LOCK_RETRY_BUDGET
    statement_timeout: float = 600.0  # MIGRATE_STATEMENT_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> Timeouts:
        return cls(
            lock_timeout=settings.migrate_statement_lock_timeout,
            retry_budget=settings.migrate_lock_retry_budget,
            statement_timeout=settings.migrate_statement_timeout,
        )

    def for_file(self, path: Path) -> Timeouts:
        """These timeouts with the file's header overrides (`-- statement_timeout: 3600`).

        Raises ValueError, naming the file, for a value that is not seconds or `off`.
        """
        overrides: dict[str, float] = {}
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not _COMMENT_OR_BLANK.match(line):
                    break
                if match := _HEADER.match(line):
                    name, raw = match.groups()
                    overrides[name] = _header_seconds(path, name, raw)
        return replace(self, **overrides)

    def statements(self, *, local: bool) -> list[str]:
        """SET [LOCAL] lock_timeout and statement_timeout: what `apply` runs, and prints."""
        scope = "SET LOCAL" if local else "SET"
        return [
            f"{scope} lock_timeout = '{_ms(self.lock_timeout)}'",
            f"{scope} statement_timeout = '{_ms(self.statement_timeout)}'",
        ]

    def apply(self, con: psycopg.Connection[Any], *, local: bool) -> None:
        """SET lock_timeout and statement_timeout, for the transaction or the session."""
        for statement in self.statements(local=local):
            con.execute(statement)

    def hint(self, exc: psycopg.Error, statement: str = "") -> str:
        """What to add to the error line when the statement timeout cancelled a statement."""
        if not (isinstance(exc, errors.QueryCanceled) and "statement timeout" in str(exc)):
            return ""
        hint = (
            f" after {self.statement_timeout:g}s (MIGRATE_STATEMENT_TIMEOUT, or "
            "`-- statement_timeout: SECONDS` in the file's header)"
        )
        if statement.lstrip().upper().startswith("CALL"):
            # PostgreSQL arms the timeout once per statement: COMMITs inside do not re-arm it.
            hint += (
                "; the whole CALL is one statement, its batches included: a batched backfill "
                "needs `-- statement_timeout: off` (or a bound on the whole job), and the "
                "rerun resumes after its committed batches"
            )
        return hint


class LockRetries:
    """The pauses between attempts after lock timeouts, and the budget they draw on.

    The budget (MIGRATE_LOCK_RETRY_BUDGET) counts the time spent blocked: each failed
    attempt's wait for its lock and the pause after it, never the time statements ran. A
    batched backfill that runs for an hour and meets a busy row twice is retried twice; a
    budget of elapsed time would be spent before its first retry.
    """

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.blocked = 0.0  # seconds: lock waits that ran out, and the pauses after them
        self._pauses = Backoff(FIRST_PAUSE, MAX_PAUSE)

    @property
    def attempts(self) -> int:
        """The attempt under way (1 before any retry)."""
        return self._pauses.attempts

    def next(self, waited: float) -> float | None:
        """After an attempt that waited `waited` s for a lock in vain: the pause, or None."""
        self.blocked += waited
        left = self.budget - self.blocked
        if left <= 0:
            return None
        pause = self._pauses.next()
        assert pause is not None  # no budget of its own
        pause = min(pause, left)
        self.blocked += pause
        return pause


def _header_seconds(path: Path, name: str, raw: str) -> float:
    if raw.lower() == "off":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"{path.name}: `-- {name}: {raw}` is not a number of seconds or off")
    return value


def _ms(seconds: float) -> str:
    # PostgreSQL reads 0 as "no limit": a positive value stays at least 1 ms.
    return f"{max(round(seconds * 1000), 1) if seconds > 0 else 0}ms"


RESET_TIMEOUTS = ("RESET lock_timeout", "RESET statement_timeout")


def reset(con: psycopg.Connection[Any]) -> None:
    """Back to the server's lock_timeout and statement_timeout (after a session-level SET)."""
    for statement in RESET_TIMEOUTS:
        con.execute(statement)


# -- who blocks us ------------------------------------------------------------------------


@dataclass(frozen=True)
class Blocker:
    """A session that held a lock the migration waited for."""

    pid: int
    application_name: str
    state: str | None
    held: float  # seconds its transaction (or, outside one, its session) has been open
    in_transaction: bool
    others: int = 0  # further sessions blocking at the same time

    def __str__(self) -> str:
        opened = "transaction open" if self.in_transaction else "connected"
        more = f", and {self.others} more" if self.others else ""
        return (
            f"pid {self.pid} (application_name {self.application_name or '?'!r}, "
            f"{self.state or 'state unknown'}, {opened} {self.held:.1f}s){more}"
        )


def blockers_of(con: psycopg.Connection[Any], pid: int) -> Blocker | None:
    """The longest-open session blocking `pid`, from pg_blocking_pids and pg_stat_activity."""
    rows = con.execute(BLOCKERS_QUERY, (pid,)).fetchall()
    if not rows:
        return None
    blocker_pid, app, state, xact_start, backend_start, now = rows[0]
    since: datetime = xact_start or backend_start
    return Blocker(
        pid=blocker_pid,
        application_name=app,
        state=state,
        held=(now - since).total_seconds(),
        in_transaction=xact_start is not None,
        others=len(rows) - 1,
    )


class BlockerWatch:
    """Looks, from a second connection, for who blocks the runner's session while it waits.

    A statement that runs longer than half the lock timeout is watched: a thread polls
    pg_blocking_pids for the runner's backend and keeps the last blocker it saw. The
    connection is opened at the first such statement and kept for the run.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], runner_pid: int) -> None:
        self._connect = connect
        self._runner_pid = runner_pid
        self._con: psycopg.Connection[Any] | None = None
        self.blocker: Blocker | None = None

    @contextmanager
    def statement(self, lock_timeout: float) -> Iterator[None]:
        """Watch while the block runs one statement; `blocker` says who blocked it last."""
        self.blocker = None
        stop = threading.Event()
        thread = threading.Thread(
            target=self._poll,
            args=(stop, lock_timeout),
            name="migration-blocker-watch",
            daemon=True,
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _poll(self, stop: threading.Event, lock_timeout: float) -> None:
        if stop.wait(lock_timeout / 2 if lock_timeout else 0.5):
            return
        interval = min(max(lock_timeout / 4, 0.05), 0.25)
        try:
            if self._con is None:
                self._con = self._connect()
            while not stop.is_set():
                seen = blockers_of(self._con, self._runner_pid)
                if seen is not None:
                    self.blocker = seen
                stop.wait(interval)
        except Exception:
            # Only a diagnosis: the retry goes on without it ("blocker not seen").
            self.close()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


# -- CREATE INDEX CONCURRENTLY ------------------------------------------------------------


def concurrent_index_name(statement: str) -> str | None:
    """The index a `CREATE [UNIQUE] INDEX CONCURRENTLY name ON …` statement builds, as written."""
    text = _LEADING_COMMENTS.sub("", statement, count=1)  # comments before the statement
    match = _CONCURRENT_INDEX.match(text)
    return match.group(1) if match else None


def drop_invalid_index(con: psycopg.Connection[Any], name: str, lock_timeout: float) -> str | None:
    """Drop the index `name` if it exists and is INVALID (a failed build); returns its name.

    Runs outside a transaction (DROP INDEX CONCURRENTLY), with its own lock timeout: the
    drop waits only for transactions that use the index, never in front of queries.
    """
    row = con.execute(INVALID_INDEX_QUERY, (name,)).fetchone()
    if row is None:
        return None
    schema, index = str(row[0]), str(row[1])
    con.execute("SELECT set_config('lock_timeout', %s, false)", (_ms(lock_timeout),))
    con.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index))
    )
    return index


def clean_up_failed_index(
    con: psycopg.Connection[Any], statement: str, exc: psycopg.Error, lock_timeout: float
) -> tuple[str, bool]:
    """After a failed statement: if it was a CREATE INDEX CONCURRENTLY, drop what it left.

    Returns a note for the error line, and whether an INVALID index is still there.
    """
    name = concurrent_index_name(statement)
    if name is None:
        return "", False
    if isinstance(exc, errors.DuplicateTable):
        # The index was there before this statement: never drop what it did not build.
        if con.execute(INVALID_INDEX_QUERY, (name,)).fetchone() is None:
            return "", False
        return (
            f"; an INVALID index {name} was already there (an interrupted run?): "
            f"DROP INDEX CONCURRENTLY {name}, then apply again",
            True,
        )
    try:
        dropped = drop_invalid_index(con, name, lock_timeout)
    except psycopg.Error as failed:
        reason = failed.diag.message_primary or type(failed).__name__
        return f"; the INVALID index {name} is left: DROP INDEX CONCURRENTLY failed: {reason}", True
    return (f"; the INVALID index {dropped} it left was dropped" if dropped else ""), False
