"""The PostgreSQL foundation of a Python web service: Starlette + asyncpg + yoyo.

The names below load on first use, so `python -m service migrate` loads neither Starlette
nor asyncpg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import Settings
    from .web.app import create_app, db_connection

__all__ = ["Settings", "create_app", "db_connection"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "db_connection"):
        from .web import app

        return getattr(app, name)
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")
