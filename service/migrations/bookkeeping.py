"""What a run writes down: yoyo's record, our checksums, and what Alembic left.

yoyo keeps `_yoyo_migration` (what is applied) and `_yoyo_log` (what happened), written by
its own backend on the runner's connection (YoyoBackend); the sha256 of each applied file
goes beside them in `service_migration_checksums`, in the same transaction. `record()` is
the one place all three are written: for `apply`, `rollback`, `baseline`, and the script
that `apply --sql` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import parse_uri
from yoyo.migrations import Migration

from .files import MigrationError, checksum
from .status import CHECKSUM_TABLE

YOYO_TABLE = "_yoyo_migration"
UPSERT_CHECKSUM = f"""
INSERT INTO {CHECKSUM_TABLE} (migration_id, checksum) VALUES (%s, %s)
ON CONFLICT (migration_id) DO UPDATE SET checksum = excluded.checksum, recorded_at = now()"""
DELETE_CHECKSUM = f"DELETE FROM {CHECKSUM_TABLE} WHERE migration_id = %s"
# The original design's Alembic keeps its revision here (version_num = '0001_baseline').
ALEMBIC_VERSIONS = """
SELECT version_num FROM alembic_version ORDER BY version_num"""
ALEMBIC_TABLE = "SELECT to_regclass('alembic_version')"

Execute = Callable[[str, Sequence[Any]], object]


class YoyoBackend(PostgresqlPsycopgBackend):
    """yoyo's backend on the runner's own connection (yoyo's URL parsing never sees ours).

    Its lock is a no-op: the runner holds the migration lock and yoyo's lock table (lock.py)
    for the whole run. tests/test_migrations.py names every yoyo method this relies on.
    """

    def __init__(self, con: psycopg.Connection[Any]) -> None:
        self._given = con
        super().__init__(parse_uri("postgresql+psycopg://"), YOYO_TABLE)

    def connect(self, dburi: Any) -> psycopg.Connection[Any]:
        self.schema = None
        return self._given

    @contextmanager
    def lock(self, timeout: float = 10) -> Iterator[None]:
        yield


def record(backend: YoyoBackend, execute: Execute, m: Migration, operation: str) -> None:
    """Write down that `m` was applied (`apply`), recorded unrun (`mark`) or rolled back.

    yoyo's row in `_yoyo_migration` and its `_yoyo_log` line through its backend, our
    checksum through `execute`: the connection's, or the printed script's.
    """
    if operation in ("apply", "mark"):
        backend.mark_one(m, log=False)
        execute(UPSERT_CHECKSUM, (m.id, checksum(m)))
    else:
        backend.unmark_one(m, log=False)
        execute(DELETE_CHECKSUM, (m.id,))
    backend.log_migration(m, operation)


def alembic_versions(con: psycopg.Connection[Any]) -> list[str] | None:
    """The revisions in Alembic's `alembic_version`, or None when there is no such table."""
    row = con.execute(ALEMBIC_TABLE).fetchone()
    if row is None or row[0] is None:
        return None
    return [str(version) for (version,) in con.execute(ALEMBIC_VERSIONS)]


def refuse_alembic_schema(con: psycopg.Connection[Any], *, recorded: bool) -> None:
    """Refuse a database Alembic migrated while nothing is recorded here: its schema is there."""
    if recorded:
        return
    found = alembic_versions(con)
    if found:
        raise MigrationError(
            f"this database was migrated by Alembic (alembic_version {found[0]!r}) and no "
            "migration is recorded here: adopt its schema first with python -m service "
            "migrate baseline ID (docs/migrations.md, Coming from Alembic)"
        )
