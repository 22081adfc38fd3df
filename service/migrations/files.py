"""The migration files: where they are, how they are read, what their checksum is.

A migration is a pair in one folder: `NNNN_name.sql` (applied) and `NNNN_name.rollback.sql`
(undone); yoyo reads them. The default folder is the `sql/` shipped in the wheel (or beside
`service/` in a checkout).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from yoyo import read_migrations
from yoyo.migrations import Migration, MigrationList


class MigrationError(Exception):
    """A migration run that cannot go on: one line for the operator, no password."""


class MigrationUsageError(MigrationError):
    """An operator's mistake on the command line (a name, an id): nothing was attempted."""


class MigrationNameError(MigrationUsageError):
    """`migrate new` was given a name we cannot make a file of."""


def default_directory() -> Path:
    """The SQL files shipped in the wheel (service/sql/), or sql/ beside service/ in a checkout.

    A plain path rather than importlib.resources: `service.sql` has no __init__.py, and a
    namespace package's resources are a MultiplexedPath, not a folder yoyo can read.
    """
    package = Path(__file__).resolve().parent.parent
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
