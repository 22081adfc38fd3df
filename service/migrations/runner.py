"""A migration run: plain-SQL files applied or rolled back by yoyo, under our lock and checksums.

yoyo reads the files and keeps its tables (`_yoyo_migration`, `_yoyo_log`), so the
plain `yoyo` CLI keeps working. What we add on top:

- one session advisory lock, held for the whole run on the connection that does the
  work: it dies with a killed runner, and its wait is bounded and names the holder;
- a second connection holds `yoyo_lock` locked (no transaction id, no snapshot), so plain
  `yoyo` runners wait for us, yet a crash of ours leaves no row behind (lock.py);
- each migration and its bookkeeping commit in one transaction (exactly once);
- a checksum of each applied file in `service_migration_checksums`; edits are refused;
- short lock waits retried, statement timeouts, no INVALID index left (safety.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors
from yoyo.migrations import Migration

from . import lock, safety
from .bookkeeping import (
    UPSERT_CHECKSUM,
    YoyoBackend,
    alembic_versions,
    record,
    refuse_alembic_schema,
)
from .connection import Target, connect, describe
from .files import MigrationError, MigrationUsageError, checksum, default_directory, read
from .safety import Blocker, BlockerWatch, LockRetries, Timeouts
from .status import (
    APPLIED_QUERY,
    CHECKSUMS_QUERY,
    CREATE_CHECKSUM_TABLE,
    TABLES_EXIST,
    Status,
    refuse_changed,
    status_of,
)

log = logging.getLogger("service.migrations")

CHECK_CLIENT = "SET client_connection_check_interval = '1s'"  # PostgreSQL 14+


class _LockTimedOut(Exception):
    """A statement's lock_timeout ran out (SQLSTATE 55P03): roll back, pause, try again."""

    def __init__(self, number: int, statement: str, blocker: Blocker | None, waited: float) -> None:
        self.number, self.statement, self.blocker = number, statement, blocker
        self.waited = waited  # seconds the statement waited for its lock, at most


def _log_retry(line: str) -> None:
    log.warning("migrations.lock_retry %s", line)


class Runner:
    """A migration run under the lock: `with Runner(url) as r: r.apply()`."""

    def __init__(
        self,
        target: Target,
        directory: Path | None = None,
        *,
        lock_timeout: float = 60.0,
        timeouts: Timeouts | None = None,
        on_retry: Callable[[str], object] = _log_retry,
    ) -> None:
        self.target = target
        self.url = target.url
        self.directory = Path(directory or default_directory())
        self.lock_timeout = lock_timeout  # for the run lock; `timeouts` are the statements'
        self.timeouts = timeouts or Timeouts()
        self.on_retry = on_retry
        self.migrations = read(self.directory)
        self._con: psycopg.Connection[Any] | None = None
        self._guard: psycopg.Connection[Any] | None = None
        self._watch: BlockerWatch | None = None
        self._backend: YoyoBackend | None = None

    def __enter__(self) -> Runner:
        try:
            self._open()
        except lock.LockNotAcquired as exc:
            self.close()
            raise MigrationError(str(exc)) from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> None:
        deadline = time.monotonic() + self.lock_timeout
        con = self._con = connect(self.target)
        if con.info.server_version >= 140000:
            # A runner killed mid-statement: its backend notices within a second and
            # aborts, releasing the lock, instead of finishing a long statement first.
            con.execute(CHECK_CLIENT)
        lock.acquire(con, self.lock_timeout)
        self._watch = BlockerWatch(lambda: connect(self.target), con.info.backend_pid)
        # First, so that a role without CREATE on the schema hears so plainly (yoyo's own
        # set-up swallows that error and fails later on a missing yoyo_lock). Only when
        # missing: CREATE ... IF NOT EXISTS still checks the privilege.
        if (con.execute(TABLES_EXIST).fetchone() or (None, None))[1] is None:
            con.execute(CREATE_CHECKSUM_TABLE)
        backend = self._backend = YoyoBackend(con)
        backend.init_database()
        self._guard = connect(self.target, purpose="guard")
        lock.hold_yoyo_table(self._guard, deadline)
        backend.ensure_internal_schema_updated()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for con in (self._guard, self._con):
            if con is not None:
                con.close()  # ends the guard's transaction; ends the session, so the lock
        self._guard = self._con = None

    # -- the work ------------------------------------------------------------------------

    @property
    def con(self) -> psycopg.Connection[Any]:
        assert self._con is not None, "use the Runner in a with block"
        return self._con

    @property
    def backend(self) -> YoyoBackend:
        assert self._backend is not None, "use the Runner in a with block"
        return self._backend

    def status(self) -> list[Status]:
        return status_of(self.con, self.migrations)

    def _refuse_changed(self) -> None:
        refuse_changed(self.status())

    def _refuse_alembic_schema(self) -> None:
        recorded = self.con.execute(APPLIED_QUERY).fetchone() is not None
        refuse_alembic_schema(self.con, recorded=recorded)

    def alembic_versions(self) -> list[str] | None:
        """What Alembic's `alembic_version` says, or None when the table is not there."""
        return alembic_versions(self.con)

    def baseline(self, upto: str) -> list[str]:
        """Record every migration up to and including `upto` as applied, running none.

        For a database whose schema is already there (Flyway's `baseline`, Alembic's
        `stamp`): each gets its checksum and a `mark` line in yoyo's log, all in one
        transaction. Refused when any migration is recorded already.
        """
        ordered = list(self.backend.to_apply(self.migrations))  # as apply would run them
        ids = [m.id for m in ordered]
        if upto not in [m.id for m in self.migrations]:
            raise MigrationUsageError(
                f"cannot baseline at {upto}: it is not a migration in {self.directory}"
            )
        recorded = [row[0] for row in self.con.execute(APPLIED_QUERY)]
        if recorded:
            raise MigrationUsageError(
                f"cannot baseline: {len(recorded)} migration(s) already recorded here (the "
                f"latest {recorded[-1]}); baseline adopts a database with none"
            )
        chosen = ordered[: ids.index(upto) + 1]
        with self.backend.transaction():
            for m in chosen:
                record(self.backend, self.con.execute, m, "mark")
        return [m.id for m in chosen]

    def _adopt(self) -> list[str]:
        """Record checksums for migrations applied without one (plain yoyo CLI)."""
        applied = {r[0] for r in self.con.execute(APPLIED_QUERY)}
        recorded = {r[0] for r in self.con.execute(CHECKSUMS_QUERY)}
        adopted = []
        for m in self.migrations:
            if m.id in applied and m.id not in recorded:
                self.con.execute(UPSERT_CHECKSUM, (m.id, checksum(m)))
                adopted.append(m.id)
        return adopted

    def apply(self, report: Callable[[str], object] = log.info) -> list[str]:
        """Apply every pending migration, each in its own transaction; returns their ids."""
        self._refuse_changed()
        self._refuse_alembic_schema()
        for migration_id in self._adopt():
            log.info("migrations.adopted %s", migration_id)
        done = []
        for m in self.backend.to_apply(self.migrations):
            self._run(m, "apply")
            report(f"applied {m.id}")
            done.append(m.id)
        return done

    def rollback(
        self, *, count: int = 1, to: str | None = None, report: Callable[[str], object] = log.info
    ) -> list[str]:
        """Roll back the newest `count` migrations (0 = all), or every one after `to`."""
        self._refuse_changed()
        applied = list(self.backend.to_rollback(self.migrations))
        if to is not None:
            ids = [m.id for m in applied]
            if to not in ids:
                known = {m.id for m in self.migrations}
                why = "is not applied" if to in known else f"is not a migration in {self.directory}"
                raise MigrationError(f"cannot roll back to {to}: it {why}")
            applied = applied[: ids.index(to)]
        elif count:
            applied = applied[:count]
        for m in applied:
            self._run(m, "rollback")
            report(f"rolled back {m.id}")
        return [m.id for m in applied]

    def accept(self, ids: Sequence[str]) -> list[str]:
        """Record the current content of edited migrations as the applied one."""
        by_id = {m.id: m for m in self.migrations}
        states = {s.id: s.state for s in self.status()}
        for migration_id in ids:
            if migration_id not in by_id:
                raise MigrationError(f"no migration {migration_id} in {self.directory}")
            if states[migration_id] == "pending":
                raise MigrationError(f"{migration_id} is not applied; nothing to accept")
        for migration_id in ids:
            self.con.execute(UPSERT_CHECKSUM, (migration_id, checksum(by_id[migration_id])))
        return list(ids)

    def _run(self, m: Migration, direction: str) -> None:
        m.load()
        file = Path(m.path).name
        if direction == "rollback":
            file = file.removesuffix(".sql") + ".rollback.sql"
        path = Path(m.path).with_name(file)
        try:
            timeouts = self.timeouts.for_file(path) if path.is_file() else self.timeouts
        except ValueError as exc:
            raise MigrationError(str(exc)) from None
        retries = LockRetries(timeouts.retry_budget)
        backend = self.backend
        if not m.use_transactions:
            with backend.disable_transactions():
                timeouts.apply(self.con, local=False)
                try:
                    self._steps(m, direction, file, timeouts, retries)
                finally:
                    safety.reset(self.con)
            with backend.transaction():
                self._record(m, direction)
            return
        while True:
            # The steps and the bookkeeping commit together: applied exactly once, or not at
            # all. A lock timeout rolls the whole transaction back; then it starts again.
            try:
                with backend.transaction():
                    timeouts.apply(self.con, local=True)
                    self._steps(m, direction, file, timeouts, retries)
                    self._record(m, direction)
                return
            except _LockTimedOut as timed_out:
                self._pause_or_give_up(m, direction, file, timed_out, timeouts, retries)

    def _steps(
        self,
        m: Migration,
        direction: str,
        file: str,
        timeouts: Timeouts,
        retries: LockRetries,
    ) -> None:
        assert self._watch is not None
        steps = list(m.steps or ())
        if direction == "rollback":
            steps.reverse()
        for number, step in enumerate(steps, 1):
            while True:
                started = time.monotonic()
                try:
                    with self._watch.statement(timeouts.lock_timeout):
                        getattr(step, direction)(self.backend)
                    break
                except psycopg.Error as exc:
                    inner = getattr(step, "step", step)
                    raw = str(getattr(inner, "_" + direction, None) or "?")
                    statement = " ".join(raw.split())
                    if len(statement) > 120:
                        statement = statement[:117] + "..."
                    index_note, index_left = "", False
                    if not m.use_transactions:
                        index_note, index_left = safety.clean_up_failed_index(
                            self.con, raw, exc, max(timeouts.retry_budget, 1.0)
                        )
                    if isinstance(exc, errors.LockNotAvailable) and not index_left:
                        ran = time.monotonic() - started  # a CALL may run long, then wait
                        waited = min(ran, timeouts.lock_timeout) if timeouts.lock_timeout else ran
                        timed_out = _LockTimedOut(number, statement, self._watch.blocker, waited)
                        if m.use_transactions:
                            raise timed_out from None
                        self._pause_or_give_up(m, direction, file, timed_out, timeouts, retries)
                        timeouts.apply(self.con, local=False)  # the index drop set its own
                        continue
                    raise MigrationError(
                        f"{_kind(direction)} {file} failed at statement {number} `{statement}`: "
                        f"{describe(exc, self.url)}{timeouts.hint(exc, statement)} "
                        f"({_left(m)}{index_note})"
                    ) from None

    def _pause_or_give_up(
        self,
        m: Migration,
        direction: str,
        file: str,
        timed_out: _LockTimedOut,
        timeouts: Timeouts,
        retries: LockRetries,
    ) -> None:
        blocker = str(timed_out.blocker or "a session already gone when looked up")
        pause = retries.next(timed_out.waited)
        if pause is None:
            raise MigrationError(
                f"{_kind(direction)} {file} gave up waiting for a lock after {retries.attempts} "
                f"attempts, blocked {retries.blocked:.1f}s "
                f"(MIGRATE_LOCK_RETRY_BUDGET={timeouts.retry_budget:g}s): statement "
                f"{timed_out.number} `{timed_out.statement}` was blocked by {blocker} ({_left(m)})"
            )
        self.on_retry(
            f"{file} statement {timed_out.number}: lock_timeout {timeouts.lock_timeout:g}s ran "
            f"out, blocked by {blocker}; attempt {retries.attempts} in {pause:.1f}s"
        )
        time.sleep(pause)

    def _record(self, m: Migration, direction: str) -> None:
        record(self.backend, self.con.execute, m, direction)


def _kind(direction: str) -> str:
    return "rollback of" if direction == "rollback" else "migration"


def _left(m: Migration) -> str:
    if m.use_transactions:
        return "rolled back, not recorded"
    return "NOT transactional: earlier statements stay applied, not recorded"


def apply(
    target: Target,
    directory: Path | None = None,
    *,
    lock_timeout: float = 60.0,
    timeouts: Timeouts | None = None,
) -> int:
    """Apply pending migrations; returns how many were applied."""
    with Runner(target, directory, lock_timeout=lock_timeout, timeouts=timeouts) as runner:
        return len(runner.apply())
