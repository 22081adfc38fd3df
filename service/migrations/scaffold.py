"""`migrate new NAME`: the next numbered pair of files, with what a new file should say."""

from __future__ import annotations

import re
from pathlib import Path

from .files import MigrationError, MigrationNameError, default_directory

_NAME = re.compile(r"[a-z0-9][a-z0-9_]*")  # fullmatch: `$` would accept a trailing newline
MAX_NAME_LENGTH = 63  # NNNN_<name>.rollback.sql stays far below the 255-byte file name limit
_NUMBERED = re.compile(r"^(\d{4})_")


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
        "-- migration is retried; a long statement may raise its own limit with a line\n"
        "-- `-- statement_timeout: SECONDS` up here. A backfill of a big table goes in batches:\n"
        "-- docs/migrations.md, Batched backfills. scripts/test lints this file (squawk).\n"
    )
    backward.write_text(
        f"-- {stem} rollback: undo {stem}.sql, statements in reverse order.\n"
        "-- Undoing drops what the migration added; the lint accepts that here:\n"
        "-- squawk-ignore-file ban-drop-table, ban-drop-column\n"
    )
    return forward, backward
