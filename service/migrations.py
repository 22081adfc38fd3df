"""Plain-SQL migrations in sql/, applied by yoyo under our own lock and checksums.

yoyo reads the files and keeps its tables (`_yoyo_migration`, `_yoyo_log`), so the
plain `yoyo` CLI keeps working. What we add on top:

- one session advisory lock, held for the whole run on the connection that does the
  work: it dies with a killed runner, and its wait is bounded and names the holder;
- yoyo's own lock row is inserted in a transaction we never commit, so plain `yoyo`
  runners wait for us, yet a crash of ours leaves no row behind;
- each migration and its bookkeeping commit in one transaction (exactly once);
- a checksum of each applied file in `service_migration_checksums`; edits are refused;
- short lock waits retried, statement timeouts, no INVALID index left (migration_safety).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import parse_uri
from yoyo.migrations import Migration, MigrationList

from . import migration_lock, migration_safety
from .migration_safety import Blocker, BlockerWatch, LockRetries, Timeouts
from .settings import DatabaseURL, Settings

if TYPE_CHECKING:
    import asyncpg  # the start-up hook's type only: `migrate` never loads asyncpg

log = logging.getLogger("service.migrations")

APPLICATION_NAME = "service-migrate"
CHECKSUM_TABLE = "service_migration_checksums"

CREATE_CHECKSUM_TABLE = f"""
CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (
    migration_id text PRIMARY KEY,
    checksum text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
)"""
UPSERT_CHECKSUM = f"""
INSERT INTO {CHECKSUM_TABLE} (migration_id, checksum) VALUES (%s, %s)
ON CONFLICT (migration_id) DO UPDATE SET checksum = excluded.checksum, recorded_at = now()"""
DELETE_CHECKSUM = f"DELETE FROM {CHECKSUM_TABLE} WHERE migration_id = %s"
TABLES_EXIST = f"SELECT to_regclass('_yoyo_migration'), to_regclass('{CHECKSUM_TABLE}')"
APPLIED_QUERY = "SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc, migration_id"
CHECKSUMS_QUERY = f"SELECT migration_id, checksum FROM {CHECKSUM_TABLE}"
_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")  # fullmatch: `$` would accept a trailing newline
MAX_NAME_LENGTH = 63  # NNNN_<name>.rollback.sql stays far below the 255-byte file name limit
_NUMBERED = re.compile(r"^(\d{4})_")


class MigrationError(Exception):
    """A migration run that cannot go on: one line for the operator, no password."""


class MigrationNameError(MigrationError):
    """`migrate new` was given a name we cannot make a file of (a usage error)."""


class _LockTimedOut(Exception):
    """A statement's lock_timeout ran out (SQLSTATE 55P03): roll back, pause, try again."""

    def __init__(self, number: int, statement: str, blocker: Blocker | None) -> None:
        self.number, self.statement, self.blocker = number, statement, blocker


def _log_retry(line: str) -> None:
    log.warning("migrations.lock_retry %s", line)


def default_directory() -> Path:
    """The SQL files shipped in the wheel (service/sql/), or sql/ beside service/ in a checkout.

    A plain path rather than importlib.resources: `service.sql` has no __init__.py, and a
    namespace package's resources are a MultiplexedPath, not a folder yoyo can read.
    """
    package = Path(__file__).resolve().parent
    shipped = package / "sql"
    return shipped if shipped.is_dir() else package.parent / "sql"


def checksum(migration: Migration) -> str:
    """sha256 of the migration file's bytes (the rollback file may be fixed freely)."""
    return hashlib.sha256(Path(migration.path).read_bytes()).hexdigest()


def read(directory: Path | None = None) -> MigrationList:
    directory = Path(directory or default_directory())
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    return read_migrations(str(directory))


@dataclass(frozen=True)
class Status:
    """One line of `migrate list`: applied, pending, changed, or missing (file gone)."""

    id: str
    state: str


def connect(url: DatabaseURL, connect_timeout: float = 5.0) -> psycopg.Connection[Any]:
    """A psycopg connection; libpq defaults (PG* variables) when DATABASE_URL is unset."""
    try:
        return psycopg.connect(
            url.value or "",
            autocommit=True,
            connect_timeout=max(2, round(connect_timeout)),
            target_session_attrs=url.target_session_attrs,
            application_name=f"{APPLICATION_NAME} {socket.gethostname()}:{os.getpid()}"[:63],
        )
    except psycopg.Error as exc:
        raise MigrationError(f"cannot connect to {url.redacted}: {describe(exc, url)}") from None


def describe(exc: BaseException, url: DatabaseURL | None = None) -> str:
    """The first line of a driver error, with any password scrubbed."""
    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag is not None else None) or str(exc) or type(exc).__name__
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    line = line.removeprefix("connection failed: ").replace("FATAL:  ", "")
    password = conninfo_to_dict(url.value or "").get("password") if url else None
    return line.replace(str(password), "***") if password else line


def _backend_class(con: psycopg.Connection[Any]) -> type[PostgresqlPsycopgBackend]:
    class Backend(PostgresqlPsycopgBackend):
        """yoyo's backend on our connection (yoyo's URL parsing never sees the real URL)."""

        def connect(self, dburi: Any) -> psycopg.Connection[Any]:
            self.schema = None
            return con

    return Backend


def status_of(con: psycopg.Connection[Any], migrations: MigrationList) -> list[Status]:
    """Applied/pending/changed for each file, then applied ids whose file is gone."""
    yoyo_table, checksum_table = con.execute(TABLES_EXIST).fetchone() or (None, None)
    applied = [r[0] for r in con.execute(APPLIED_QUERY)] if yoyo_table else []
    recorded = dict(con.execute(CHECKSUMS_QUERY).fetchall()) if checksum_table else {}
    return _states(migrations, applied, recorded)


def _states(
    migrations: MigrationList, applied: list[str], recorded: dict[str, str]
) -> list[Status]:
    result = []
    for m in migrations:
        if m.id not in applied:
            result.append(Status(m.id, "pending"))
        elif m.id in recorded and recorded[m.id] != checksum(m):
            result.append(Status(m.id, "changed"))
        else:
            result.append(Status(m.id, "applied"))
    known = {m.id for m in migrations}
    result += [Status(id, "missing") for id in applied if id not in known]
    return result


def status(
    url: DatabaseURL, directory: Path | None = None, connect_timeout: float = 5.0
) -> list[Status]:
    """`migrate list`: read-only, takes no lock (so it works while a run is going on)."""
    migrations = read(directory)
    with connect(url, connect_timeout) as con:
        return status_of(con, migrations)


class Runner:
    """A migration run under the lock: `with Runner(url) as r: r.apply()`."""

    def __init__(
        self,
        url: DatabaseURL,
        directory: Path | None = None,
        *,
        lock_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        timeouts: Timeouts | None = None,
        on_retry: Callable[[str], object] = _log_retry,
    ) -> None:
        self.url = url
        self.directory = Path(directory or default_directory())
        self.lock_timeout = lock_timeout  # for the run lock; `timeouts` are the statements'
        self.connect_timeout = connect_timeout
        self.timeouts = timeouts or Timeouts()
        self.on_retry = on_retry
        self.migrations = read(self.directory)
        self._con: psycopg.Connection[Any] | None = None
        self._guard: psycopg.Connection[Any] | None = None
        self._watch: BlockerWatch | None = None

    def __enter__(self) -> Runner:
        try:
            self._open()
        except migration_lock.LockNotAcquired as exc:
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
        con = self._con = connect(self.url, self.connect_timeout)
        if con.info.server_version >= 140000:
            # A runner killed mid-statement: its backend notices within a second and
            # aborts, releasing the lock, instead of finishing a long statement first.
            con.execute("SET client_connection_check_interval = '1s'")
        migration_lock.acquire(con, self.lock_timeout)
        self._watch = BlockerWatch(
            lambda: connect(self.url, self.connect_timeout), con.info.backend_pid
        )
        # First, so that a role without CREATE on the schema hears so plainly (yoyo's own
        # set-up swallows that error and fails later on a missing yoyo_lock). Only when
        # missing: CREATE ... IF NOT EXISTS still checks the privilege.
        if (con.execute(TABLES_EXIST).fetchone() or (None, None))[1] is None:
            con.execute(CREATE_CHECKSUM_TABLE)
        self.backend = _backend_class(con)(parse_uri("postgresql+psycopg://"), "_yoyo_migration")
        self.backend._is_locked = True  # we hold the real lock; yoyo's row is handled below
        self.backend.init_database()
        self._guard = connect(self.url, self.connect_timeout)
        migration_lock.hold_yoyo_row(self._guard, deadline)
        self.backend.ensure_internal_schema_updated()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for con in (self._guard, self._con):
            if con is not None:
                con.close()  # rolls back the yoyo row; ends the session, so the lock
        self._guard = self._con = None

    # -- the work ------------------------------------------------------------------------

    @property
    def con(self) -> psycopg.Connection[Any]:
        assert self._con is not None, "use the Runner in a with block"
        return self._con

    def status(self) -> list[Status]:
        return status_of(self.con, self.migrations)

    def _refuse_changed(self) -> None:
        changed = [s.id for s in self.status() if s.state == "changed"]
        if changed:
            raise MigrationError(
                f"{changed[0]}.sql was edited after it was applied (checksum differs); restore "
                f"it, or accept the new content: python -m service migrate accept {changed[0]}"
            )

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
                    migration_safety.reset(self.con)
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
                        index_note, index_left = migration_safety.clean_up_failed_index(
                            self.con, raw, exc, max(timeouts.retry_budget, 1.0)
                        )
                    if isinstance(exc, errors.LockNotAvailable) and not index_left:
                        timed_out = _LockTimedOut(number, statement, self._watch.blocker)
                        if m.use_transactions:
                            raise timed_out from None
                        self._pause_or_give_up(m, direction, file, timed_out, timeouts, retries)
                        timeouts.apply(self.con, local=False)  # the index drop set its own
                        continue
                    raise MigrationError(
                        f"{_kind(direction)} {file} failed at statement {number} `{statement}`: "
                        f"{describe(exc, self.url)}{timeouts.hint(exc)} "
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
        pause = retries.next_pause()
        if pause is None:
            raise MigrationError(
                f"{_kind(direction)} {file} gave up waiting for a lock after {retries.attempts} "
                f"attempts in {retries.elapsed:.1f}s "
                f"(MIGRATE_LOCK_RETRY_BUDGET={timeouts.retry_budget:g}s): statement "
                f"{timed_out.number} `{timed_out.statement}` was blocked by {blocker} ({_left(m)})"
            )
        self.on_retry(
            f"{file} statement {timed_out.number}: lock_timeout {timeouts.lock_timeout:g}s ran "
            f"out, blocked by {blocker}; attempt {retries.attempts + 1} in {pause:.1f}s"
        )
        retries.pause(pause)

    def _record(self, m: Migration, direction: str) -> None:
        backend = self.backend
        if direction == "apply":
            backend.mark_one(m, log=False)
            self.con.execute(UPSERT_CHECKSUM, (m.id, checksum(m)))
        else:
            backend.unmark_one(m, log=False)
            self.con.execute(DELETE_CHECKSUM, (m.id,))
        backend.log_migration(m, direction)


def _kind(direction: str) -> str:
    return "rollback of" if direction == "rollback" else "migration"


def _left(m: Migration) -> str:
    if m.use_transactions:
        return "rolled back, not recorded"
    return "NOT transactional: earlier statements stay applied, not recorded"


def apply(
    url: DatabaseURL,
    directory: Path | None = None,
    lock_timeout: float = 60.0,
    connect_timeout: float = 5.0,
    timeouts: Timeouts | None = None,
) -> int:
    """Apply pending migrations; returns how many were applied."""
    with Runner(
        url,
        directory,
        lock_timeout=lock_timeout,
        connect_timeout=connect_timeout,
        timeouts=timeouts,
    ) as runner:
        return len(runner.apply())


def new(name: str, directory: Path | None = None) -> tuple[Path, Path]:
    """Create the next numbered pair NNNN_name.sql + NNNN_name.rollback.sql."""
    if len(name) > MAX_NAME_LENGTH:
        raise MigrationNameError(
            f"migration name is {len(name)} characters long; at most {MAX_NAME_LENGTH}"
        )
    if not _NAME.fullmatch(name):
        raise MigrationNameError(f"migration name {name!r}: use lower-case letters, digits and _")
    directory = Path(directory or default_directory())
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    numbers = [int(m.group(1)) for p in directory.glob("*.sql") if (m := _NUMBERED.match(p.name))]
    stem = f"{max(numbers, default=0) + 1:04d}_{name}"
    forward, backward = directory / f"{stem}.sql", directory / f"{stem}.rollback.sql"
    forward.write_text(
        f"-- {stem}: describe the change here.\n"
        "-- Runs in one transaction. For CREATE INDEX CONCURRENTLY and the like, add a line\n"
        "-- `-- transactional: false` at the top (see docs/migrations.md for the risk).\n"
        "-- Each statement waits at most MIGRATE_STATEMENT_LOCK_TIMEOUT for a lock, then the\n"
        "-- migration is retried; a long backfill may raise its own limit with a line\n"
        "-- `-- statement_timeout: SECONDS` up here. scripts/test lints this file (squawk).\n"
    )
    backward.write_text(
        f"-- {stem} rollback: undo {stem}.sql, statements in reverse order.\n"
        "-- Undoing drops what the migration added; the lint accepts that here:\n"
        "-- squawk-ignore-file ban-drop-table, ban-drop-column\n"
    )
    return forward, backward


def startup_hook(settings: Settings) -> Callable[[asyncpg.Pool], Awaitable[None]]:
    """Database.on_connected hook: DB_MIGRATE_ON_STARTUP, then log applied/pending counts."""

    async def on_connected(pool: asyncpg.Pool) -> None:
        if settings.migrate_on_startup:
            # Under the same lock as the command; a failure keeps the service not ready
            # (Database logs it and retries), never serving a half-migrated schema.
            count = await asyncio.to_thread(
                apply,
                settings.database_url,
                None,
                settings.migrate_lock_timeout,
                settings.connect_timeout,
                Timeouts.from_settings(settings),
            )
            log.info("migrations.applied_on_startup count=%d", count)
        migrations = read()
        async with pool.acquire() as con:
            tables = await con.fetchrow(TABLES_EXIST)
            assert tables is not None  # a SELECT of two expressions: always one row
            yoyo_table, checksum_table = tables
            applied = [r[0] for r in await con.fetch(APPLIED_QUERY)] if yoyo_table else []
            recorded: dict[str, str] = (
                {r[0]: r[1] for r in await con.fetch(CHECKSUMS_QUERY)} if checksum_table else {}
            )
        states = [s.state for s in _states(migrations, applied, recorded)]
        log.info(
            "migrations.status applied=%d pending=%d changed=%d missing=%d",
            states.count("applied"),
            states.count("pending"),
            states.count("changed"),
            states.count("missing"),
        )

    return on_connected
