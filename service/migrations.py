"""Plain-SQL migrations in sql/, applied by yoyo (minimal; grown by the migrations issue)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from yoyo import get_backend, read_migrations

from .settings import DatabaseURL


def default_directory() -> Path:
    """The SQL files shipped with the package, or sql/ beside service/ in a checkout.

    (Run from a checkout, `service` is found on the current directory before the
    installed mapping that makes sql/ importable as `service.sql`.)
    """
    try:
        return Path(str(files("service.sql")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "sql"


def yoyo_url(url: DatabaseURL) -> str:
    return url.with_scheme("postgresql+psycopg") or "postgresql+psycopg://"


def apply(url: DatabaseURL, directory: Path | None = None) -> int:
    """Apply pending migrations; returns how many were applied."""
    backend = get_backend(yoyo_url(url))
    migrations = read_migrations(str(directory or default_directory()))
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    return len(pending)
