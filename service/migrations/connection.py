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
from pathlib import Path
from typing import Any

import psycopg

from ..password_file import PasswordFileError, read_password
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
    password_file: Path | None = None  # DATABASE_PASSWORD_FILE, read at each connect

    @classmethod
    def from_settings(cls, settings: Settings) -> Target:
        return cls(
            settings.database_url,
            settings.session_attrs,
            settings.connect_timeout,
            settings.password_file,
        )

    @classmethod
    def parse(cls, url: str) -> Target:
        """A URL with the settings' defaults (tests, scripts)."""
        return cls(DatabaseURL.parse(url))


def connect(target: Target, *, purpose: str = "") -> psycopg.Connection[Any]:
    """A psycopg connection in autocommit mode, named for pg_stat_activity.

    `service-migrate <host>:<pid>`, or `service-migrate-<purpose> <host>:<pid>` for a
    runner's second connections (the guard), so that each session says what it is. libpq
    applies the URL's keepalives and tcp_user_timeout itself; those it does not name get
    the service's defaults (libpq's own leave a vanished server's socket open for hours).
    """
    url = target.url
    name = f"{APPLICATION_NAME}-{purpose}" if purpose else APPLICATION_NAME
    tcp: dict[str, Any] = url.socket_options.libpq()  # the URL's values where it names them
    secret: dict[str, Any] = {}
    if target.password_file is not None:
        try:
            secret["password"] = read_password(target.password_file)
        except PasswordFileError as exc:
            raise CannotConnect(f"cannot connect to {url.redacted}: {exc}") from None
    try:
        return psycopg.connect(
            url.value or "",
            autocommit=True,
            connect_timeout=max(2, round(target.connect_timeout)),
            target_session_attrs=target.session_attrs,
            application_name=f"{name} {socket.gethostname()}:{os.getpid()}"[:63],
            **tcp,
            **secret,
        )
    except psycopg.Error as exc:
        line = describe(exc, url, secret.get("password"))
        raise CannotConnect(f"cannot connect to {url.redacted}: {line}") from None


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


def describe(
    exc: BaseException, url: DatabaseURL | None = None, password: str | None = None
) -> str:
    """The first line of a driver error, with the URL's secrets (or `password`) scrubbed."""
    diag = getattr(exc, "diag", None)
    text = (diag.message_primary if diag is not None else None) or str(exc) or type(exc).__name__
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    line = line.removeprefix("connection failed: ").replace("FATAL:  ", "")
    secrets = (password,) if password else url.secrets if url is not None else ()
    for secret in secrets:
        line = line.replace(secret, "***")
    return line
