"""One connection's concerns: why it failed (one word), when it retires, what its release resets.

`pool.py` owns the pool and lends its connections; this is what it knows about one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import socket
from collections.abc import Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..database_url import SocketOptions
from ..password_file import PasswordFileError
from .states import DbState

CLIENT_DISCONNECTED = "client disconnected"  # the message of a disconnect's cancellation


class DatabaseUnavailable(Exception):
    """No connection could be had within the bounded wait; the handler answers 503."""

    def __init__(self, reason: DbState) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionSetupFailed(Exception):
    """A feature's on_connect hook raised: the new connection is closed, never lent."""


class ServerRefusesWrites(Exception):
    """A new pool reached a server that takes no writes (target_session_attrs=any)."""


class QueryTimeout(DatabaseUnavailable, TimeoutError):
    """A query ran past its timeout and was cancelled on the server; the handler answers 503."""

    def __init__(self) -> None:
        super().__init__(DbState.TIMEOUT)


class Connection(asyncpg.Connection):
    """An asyncpg connection that knows when to retire and how much to reset at release."""

    __slots__ = (
        "retire_at",
        "closed_by_us",
        "full_reset",
        "_nothing_to_reset",
        "_listened",
        "_socket_events",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retire_at = math.inf  # set by the pool's init (DB_POOL_MAX_LIFETIME)
        # Metrics: a close we start (retire, expire, timeout, shutdown) is not a "lost" one.
        self.closed_by_us = False
        self.full_reset = True  # DB_RESET_ON_RELEASE=full; set by the pool's init
        self._nothing_to_reset = False
        self._listened = False  # add_listener ran: the server holds a LISTEN to undo
        self._socket_events: select.poll | None = None  # set by prepare_socket()

    def prepare_socket(self, tcp: Sequence[tuple[int, int, int]]) -> None:
        """Set `tcp` (tcp_options: keepalives, the user timeout) on this connection's
        socket, and look at it from now on (see `server_went_away`)."""
        # asyncpg keeps the transport private (tests/test_connection.py pins it). With
        # uvloop the socket is a stand-in that still takes setsockopt.
        transport: asyncio.Transport = self._transport  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # not a Unix socket
            for level, option, value in tcp:
                sock.setsockopt(level, option, value)
        events = select.poll()
        events.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        self._socket_events = events

    def server_went_away(self) -> bool:
        """The server wrote to or closed this idle connection: it must not be lent.

        An idle connection receives nothing unless its server is ending it (a shutdown's
        FATAL 57P01, then the close) and the event loop has not read that yet: under load,
        a connection can be lent in between, and its query then fails. One poll(2) without
        waiting and without a round trip, as pgx's CheckConn reads the socket before
        lending. Anything pending (data, the peer's close, an error) counts as gone.
        """
        events = self._socket_events
        return events is not None and bool(events.poll(0))

    def skip_next_reset(self) -> None:
        """Only the readiness query ran since acquire: release without the reset round trip.

        After the readiness query there is nothing to reset, and the round trip was half of
        each check's time, with every waiting probe parked behind it.
        """
        self._nothing_to_reset = True

    async def add_listener(self, channel: str, callback: Any) -> None:
        self._listened = True
        await super().add_listener(channel, callback)

    def get_reset_query(self) -> str:
        """What the release runs after asyncpg's own ROLLBACK of an open transaction.

        DB_RESET_ON_RELEASE=rollback (the default) stops there, as SQLAlchemy's pool (the
        original design), psycopg_pool and pgx do: no round trip for a connection left idle.
        `full` adds asyncpg's reset (advisory locks, cursors, LISTEN, SET): a round trip per
        release, for apps that leave session state behind (docs/performance.md).
        """
        if self._nothing_to_reset:
            self._nothing_to_reset = False
            return ""
        if not self.full_reset and not self._listened:
            return ""
        self._listened = False
        return super().get_reset_query()

    async def close(self, *, timeout: float | None = None) -> None:
        self.closed_by_us = self.closed_by_us or not self.is_closed()
        await super().close(timeout=timeout)

    def terminate(self) -> None:
        self.closed_by_us = self.closed_by_us or not self.is_closed()
        super().terminate()


def tcp_options(options: SocketOptions) -> tuple[tuple[int, int, int], ...]:
    """`setsockopt` arguments for `options`, libpq's way: 0 leaves the system's default.

    Options this platform lacks are left out, as libpq does (macOS has no
    TCP_USER_TIMEOUT and names TCP_KEEPIDLE otherwise).
    """
    tcp = socket.IPPROTO_TCP
    wanted = [(socket.SOL_SOCKET, "SO_KEEPALIVE", int(options.keepalives))]
    if options.keepalives:
        wanted += [
            (tcp, "TCP_KEEPIDLE", options.idle),
            (tcp, "TCP_KEEPINTVL", options.interval),
            (tcp, "TCP_KEEPCNT", options.count),
        ]
    wanted.append((tcp, "TCP_USER_TIMEOUT", options.user_timeout_ms))
    found = []
    for level, name, value in wanted:
        option = getattr(socket, name, None)
        if option is not None and (value > 0 or name == "SO_KEEPALIVE"):
            found.append((level, option, value))
    return tuple(found)


# The connection or the server is gone: class 08 (connection exceptions), 57P01-57P05
# (shutdown, crash, cannot connect now, database dropped, idle session timeout), a socket
# error, or asyncpg's protocol state broken by one of these (InternalClientError).
GONE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.DatabaseDroppedError,
    asyncpg.IdleSessionTimeoutError,
    asyncpg.InternalClientError,
)
# InterfaceErrors about what the caller asked for: the connection is fine. (A parameter
# asyncpg cannot encode is asyncpg.DataError, a PostgresError with SQLSTATE 22000.)
CALLER_ERRORS = (
    asyncpg.ClientConfigurationError,
    asyncpg.UnsupportedClientFeatureError,
    asyncpg.UnsupportedServerFeatureError,
)


def behind(con: PoolConnectionProxy[Any]) -> asyncpg.Connection | None:
    """The connection behind a pool's proxy; None once asyncpg took it back (it died while
    lent: the proxy then refuses every call). A private field (tests/test_connection.py
    pins it)."""
    raw: asyncpg.Connection | None = con._con  # type: ignore[attr-defined]
    return raw


def connection_gone(exc: BaseException, con: PoolConnectionProxy[Any]) -> bool:
    """Whether `exc`, raised while `con` was lent, means the connection or its server is gone.

    By its class, or by what it left behind: any other driver error after which the
    connection is closed (a FATAL the server ended the session with, for one).
    """
    if isinstance(exc, GONE):
        return True
    if not isinstance(exc, asyncpg.InterfaceError | asyncpg.PostgresError | DatabaseUnavailable):
        return False
    raw = behind(con)
    return raw is None or raw.is_closed()


def discard(con: PoolConnectionProxy[Any]) -> None:
    """Close a lent connection at once, never to be reused; never raises.

    Once asyncpg has taken a dead connection back, its proxy refuses every call: there
    is nothing left to close then.
    """
    raw = behind(con)
    if raw is not None and not raw.is_closed():
        with contextlib.suppress(Exception):
            raw.terminate()


def classify(exc: BaseException) -> DbState:
    """One word for why the database is not usable; never the exception's text."""
    if isinstance(exc, TimeoutError):
        return DbState.TIMEOUT
    if isinstance(exc, ServerRefusesWrites | asyncpg.TargetServerAttributeNotMatched):
        # No host of the list is what target_session_attrs asks for (read-write: a primary).
        return DbState.READ_ONLY
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError | PasswordFileError):
        return DbState.UNAUTHORIZED
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DbState.UNKNOWN_DATABASE
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return DbState.UNAVAILABLE
    if isinstance(exc, (*GONE, asyncpg.InterfaceError)):
        return DbState.DISCONNECTED
    return DbState.ERROR


def refuses_writes(exc: BaseException) -> bool:
    """The server is read-only: SQLSTATE 25006, or a standby refusing a read-write transaction.

    The latter is SQLSTATE 0A000 (feature not supported), told apart by its message
    ("cannot set transaction read-write mode during recovery"; with an English lc_messages).
    """
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return True
    return isinstance(exc, asyncpg.FeatureNotSupportedError) and "during recovery" in str(exc)
