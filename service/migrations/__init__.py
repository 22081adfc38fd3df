"""Migrations: plain-SQL files in sql/, applied by yoyo on psycopg, under our lock.

Loads neither asyncpg nor Starlette: `python -m service migrate` is a different driver and
a different process from the service.

    files       where the files are, reading them, checksums, MigrationError
    scaffold    `migrate new NAME`
    connection  the psycopg connection (read-only for list/check), one-line errors
    status      what the database records: applied, pending, changed, missing
    lock        the migration lock (an advisory lock; yoyo_lock held by a table lock)
    safety      lock timeouts retried, statement timeouts, no INVALID index left
    bookkeeping yoyo's record and our checksums written; what Alembic left
    runner      Runner: apply, rollback, accept, baseline; apply() for one call
    offline     `apply --sql`: the SQL apply would run, printed
    startup     the service's start-up hook (DB_MIGRATE_ON_STARTUP, the status line)
    cli         `python -m service migrate ...`
"""

from __future__ import annotations

from .connection import CannotConnect, Target
from .files import (
    MigrationError,
    MigrationNameError,
    MigrationUsageError,
    default_directory,
    read,
)
from .runner import Runner, apply
from .status import Status, status

__all__ = [
    "CannotConnect",
    "MigrationError",
    "MigrationNameError",
    "MigrationUsageError",
    "Runner",
    "Status",
    "Target",
    "apply",
    "default_directory",
    "read",
    "status",
]
