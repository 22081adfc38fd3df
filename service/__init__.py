"""The PostgreSQL foundation of a Python web service: Starlette + asyncpg + yoyo."""

from .app import create_app, db_connection
from .settings import Settings

__all__ = ["Settings", "create_app", "db_connection"]
