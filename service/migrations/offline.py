"""`migrate apply --sql`: the SQL `apply` would run for the pending migrations, printed.

Alembic's offline mode, for SQL handed to a DBA or a change-review board. What is pending
and what yoyo's tables look like are read in one READ ONLY transaction; then `apply`'s
work is written out in its order: the session settings, each migration in its own
transaction (none for a `-- transactional: false` file) with its timeouts, and the
bookkeeping with literal values: yoyo's own statements, from its own backend, printed
instead of run. Run with `psql -v ON_ERROR_STOP=1 -f FILE`, it leaves the database as
`apply` would (tests/test_migrations.py compares the two). Printing changes nothing: no
row, no lock.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors
from yoyo import internalmigrations
from yoyo.migrations import Migration
from yoyo.utils import change_param_style

from .bookkeeping import UPSERT_CHECKSUM, YoyoBackend, record, refuse_alembic_schema
from .connection import Target, reading
from .files import MigrationError, checksum, read
from .lock import TRY_LOCK_OR_STOP
from .runner import CHECK_CLIENT
from .safety import RESET_TIMEOUTS, Timeouts
from .status import CHECKSUM_TABLE, CREATE_CHECKSUM_TABLE, refuse_changed, status_of

YOYO_LOCK_TABLE = "SELECT to_regclass('yoyo_lock'), to_regclass(%s)"


class Script:
    """SQL statements as text, their values inlined as literals, each ending in `;`."""

    def __init__(self, con: psycopg.Connection[Any]) -> None:
        self._cursor = psycopg.ClientCursor(con)
        self.lines: list[str] = []

    def add(self, statement: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        text = (self._cursor.mogrify(statement, params) if params else statement).strip()
        if not text.endswith(";"):
            # After a trailing `-- comment` a `;` on the same line would be commented out.
            text += "\n;" if "--" in text.rsplit("\n", 1)[-1] else ";"
        self.lines.append(text)

    def comment(self, text: str) -> None:
        self.lines.append(f"-- {text}")


class _NoRows:
    description = None

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []


class PrintingBackend(YoyoBackend):
    """yoyo's backend with its writes printed into the script; its reads run (read-only).

    A read of a table the script creates but the database has not yet finds nothing.
    """

    def __init__(self, con: psycopg.Connection[Any], script: Script) -> None:
        self._script = script
        super().__init__(con)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        if sql.lstrip().upper().startswith("SELECT"):
            try:
                with self._given.transaction():  # a savepoint: a failed read spoils nothing
                    return super().execute(sql, params)
            except errors.UndefinedTable:
                return _NoRows()
        statement, values = change_param_style(self.driver.paramstyle, sql, params)
        first, _, rest = statement.strip().partition("\n")  # yoyo's indented triple quotes
        self._script.add(f"{first}\n{textwrap.dedent(rest)}" if rest else first, values)
        return _NoRows()

    def begin(self) -> None:
        self._in_transaction = True
        self._script.add("BEGIN")

    def commit(self) -> None:
        self._script.add("COMMIT")
        self._in_transaction = False

    def rollback(self) -> None:
        self._script.add("ROLLBACK")
        self._in_transaction = False


def apply_script(
    target: Target, directory: Path | None = None, timeouts: Timeouts | None = None
) -> list[str]:
    """What `apply` would run on `target` now, as lines of SQL (and comments)."""
    migrations = read(directory)
    timeouts = timeouts or Timeouts()
    with reading(target) as con:
        states = status_of(con, migrations)
        refuse_changed(states)
        refuse_alembic_schema(con, recorded=any(s.state != "pending" for s in states))
        script = Script(con)
        backend = PrintingBackend(con, script)
        backend._internal_schema_updated = True  # printed below, after the preamble
        pending = list(backend.to_apply(migrations))  # what is applied, read as apply does
        _preamble(script, con, target, pending)
        yoyo_lock, checksums = con.execute(YOYO_LOCK_TABLE, (CHECKSUM_TABLE,)).fetchone() or (
            None,
            None,
        )
        if checksums is None:
            script.add(CREATE_CHECKSUM_TABLE)
        if yoyo_lock is None:
            backend.create_lock_table()
        if internalmigrations.needs_upgrading(backend):
            internalmigrations.upgrade(backend)
        for state in states:  # applied by plain yoyo, without a checksum: adopted
            if state.state == "applied" and not _has_checksum(con, state.id, checksums):
                m = next(m for m in migrations if m.id == state.id)
                script.add(UPSERT_CHECKSUM, (m.id, checksum(m)))
        for m in pending:
            _migration(script, backend, m, timeouts)
        if not pending:
            script.comment("nothing to apply")
    return script.lines


def _preamble(
    script: Script, con: psycopg.Connection[Any], target: Target, pending: list[Migration]
) -> None:
    ids = f" ({pending[0].id} .. {pending[-1].id})" if pending else ""
    script.comment(
        f"What `python -m service migrate apply` would run on {target.url.redacted} for "
        f"{len(pending)} pending migration(s){ids},"
    )
    script.comment(f"printed {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC by `migrate apply --sql`.")
    script.comment("Run it in one session, stopping at the first error:")
    script.comment("    psql -v ON_ERROR_STOP=1 -f THIS_FILE")
    script.comment("If it stops, fix the cause and print it again: it lists what is still pending.")
    script.comment("Unlike `apply`, it does not lock plain `yoyo` runners out (that takes a second")
    script.comment("session); the migration lock below keeps other `migrate` runs out.")
    if con.info.server_version >= 140000:
        script.add(CHECK_CLIENT)
    script.add(TRY_LOCK_OR_STOP)


def _has_checksum(con: psycopg.Connection[Any], migration_id: str, table: object) -> bool:
    if table is None:
        return False
    query = f"SELECT 1 FROM {CHECKSUM_TABLE} WHERE migration_id = %s"
    return con.execute(query, (migration_id,)).fetchone() is not None


def _migration(script: Script, backend: PrintingBackend, m: Migration, timeouts: Timeouts) -> None:
    m.load()
    path = Path(m.path)
    try:
        timeouts = timeouts.for_file(path)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    statements = []
    for step in m.steps or ():
        raw = getattr(step, "step", step)._apply
        if not isinstance(raw, str):
            raise MigrationError(f"{path.name}: a Python migration cannot be printed as SQL")
        statements.append(raw)
    script.lines.append("")
    script.comment(f"{path.name}" + ("" if m.use_transactions else " (not transactional)"))
    if m.use_transactions:
        backend.begin()
        for statement in timeouts.statements(local=True) + statements:
            script.add(statement)
        record(backend, script.add, m, "apply")
        backend.commit()
        return
    for statement in timeouts.statements(local=False) + statements + list(RESET_TIMEOUTS):
        script.add(statement)
    backend.begin()
    record(backend, script.add, m, "apply")
    backend.commit()
