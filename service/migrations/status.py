"""What the database records of the migrations: applied, pending, changed or missing.

yoyo's `_yoyo_migration` says what was applied; `service_migration_checksums` says with
which content. Read-only: `migrate list` and `migrate check` take no lock, so they work
while a run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from yoyo.migrations import MigrationList

from .connection import Target, reading
from .files import MigrationError, checksum, read

CHECKSUM_TABLE = "service_migration_checksums"
CREATE_CHECKSUM_TABLE = f"""
CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (
    migration_id text PRIMARY KEY,
    checksum text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
)"""
TABLES_EXIST = f"SELECT to_regclass('_yoyo_migration'), to_regclass('{CHECKSUM_TABLE}')"
APPLIED_QUERY = "SELECT migration_id FROM _yoyo_migration ORDER BY applied_at_utc, migration_id"
CHECKSUMS_QUERY = f"SELECT migration_id, checksum FROM {CHECKSUM_TABLE}"


@dataclass(frozen=True)
class Status:
    """One line of `migrate list`: applied, pending, changed, or missing (file gone)."""

    id: str
    state: str


def status_of(con: psycopg.Connection[Any], migrations: MigrationList) -> list[Status]:
    """Applied/pending/changed for each file, then applied ids whose file is gone."""
    yoyo_table, checksum_table = con.execute(TABLES_EXIST).fetchone() or (None, None)
    applied = [r[0] for r in con.execute(APPLIED_QUERY)] if yoyo_table else []
    recorded = dict(con.execute(CHECKSUMS_QUERY).fetchall()) if checksum_table else {}
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


def status(target: Target, directory: Path | None = None) -> list[Status]:
    """`migrate list` and `check`: a READ ONLY transaction and no lock (works during a run)."""
    migrations = read(directory)
    with reading(target) as con:
        return status_of(con, migrations)


def refuse_changed(states: list[Status]) -> None:
    """Refuse to run while an applied file was edited (apply, rollback, apply --sql)."""
    changed = [s.id for s in states if s.state == "changed"]
    if changed:
        raise MigrationError(
            f"{changed[0]}.sql was edited after it was applied (checksum differs); restore "
            f"it, or accept the new content: python -m service migrate accept {changed[0]}"
        )
