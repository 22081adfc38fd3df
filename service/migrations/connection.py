"""The migrate command's connection: psycopg (libpq), never asyncpg.

libpq defaults apply when DATABASE_URL is unset; errors become one line with any password
scrubbed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..settings import DatabaseURL, Settings
from .files import MigrationError

APPLICATION_NAME = "service-migrate"


class CannotConnect(MigrationError):
    """The database did not answer or refused the login: nothing was attempted."""


@dataclass(frozen=True)
class Target:
    """Where the migrate command connects, and how: what the settings say, or a URL alone."""

    url: DatabaseURL
    session_attrs: str = "read-write"
    connect_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Target:
        return cls(settings.database_url, settings.session_attrs, settings.connect_timeout)

    @classmethod
    def parse(cls, url: str) -> Target:
        """A URL with the settings' defaults (tests, scripts)."""
        return cls(DatabaseURL.parse(url))


def connect(target: Target, *, purpose: str = "") -> psycopg.Connection[Any]:
    """A psycopg connection in autocommit mode, named for pg_stat_activity.

    `service-migrate <host>:<pid>`, or `service-migrate-<purpose> <host>:<pid>` for a
    runner's second connections (the guard), so that each session says what it is.
    """
    url = target.url
    name = f"{APPLICATION_NAME}-{purpose}" if purpose else APPLICATION_NAME
    try:
        return psycopg.connect(
            url.value or "",
            autocommit=True,
            connect_timeout=max(2, round(target.connect_timeout)),
            target_session_attrs=target.session_attrs,
            application_name=f"{name} {socket.gethostname()}:{os.getpid()}"[:63],
        )
    except psycopg.Error as exc:
        raise CannotConnect(f"cannot connect to {url.redacted}: {describe(exc, url)}") from None


@contextmanager
def reading(target: Target) -> Iterator[psycopg.Connection[Any]]:
    """A connection inside one READ ONLY transaction, for the commands that change nothing.

    The transaction's own setting (BEGIN READ ONLY), never a session SET: behind a
    transaction-mode PgBouncer a session setting stays on the server connection and is
    lent to the next client.
    """
    with connect(target) as con:
        con.read_only = True
        with con.transaction():
            yield con


def describe(exc: BaseException, url: DatabaseURL | None = None) -> str:
    """The first line of a driver error, with any password scrubbed."""
    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag is not None else None) or str(exc) or type(exc).__name__
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    line = line.removeprefix("connection failed: ").replace("FATAL:  ", "")
    password = conninfo_to_dict(url.value or "").get("password") if url else None
    return line.replace(str(password), "***") if password else line
