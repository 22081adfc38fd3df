"""How one of a Database's connections is opened and set up, before anyone uses it.

The start-up parameters (its name, UTC, the idle-in-transaction backstop), the password
(DATABASE_PASSWORD_FILE, read for each new connection), a host list host by host, the TCP
options on its socket, the JSON codecs, the feature's on_connect, its lifetime, and the
counts of connections opened, closed and lost. pool.py lends what this opens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypedDict, cast

import asyncpg
import asyncpg.connect_utils
from asyncpg.connect_utils import SessionAttribute
from asyncpg.connection import LoggedQuery

from ..password_file import PasswordFileError, read_password
from ..settings import Settings
from .codecs import set_json_codecs
from .connection import Connection, ConnectionSetupFailed, tcp_options

log = logging.getLogger("service.db")

APPLICATION_NAME = "service"
# DB_IDLE_IN_TRANSACTION_TIMEOUT goes as a start-up parameter: it is then the session's
# default, which RESET ALL (DB_RESET_ON_RELEASE=full) keeps, at no round trip. PgBouncer
# refuses start-up parameters it does not know ("unsupported startup parameter"); then it
# is left out, said once, and ALTER ROLE … SET is the way (docs/operations.md).
IDLE_IN_TRANSACTION = "idle_in_transaction_session_timeout"
LIFETIME_SPREAD = 0.05  # DB_POOL_MAX_LIFETIME less up to 5 %, as psycopg_pool does
# What opening a connection may fail with (the readiness word says which).
OPEN_FAILED = (
    TimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,
    ConnectionSetupFailed,
    PasswordFileError,
)

# A feature's per-connection set-up (create_app's on_connect).
OnConnect: TypeAlias = Callable[[asyncpg.Connection], Awaitable[None]]


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _quiet_tls_negotiation() -> None:
    """asyncpg 0.32 leaves a future unretrieved when a connection is cut while it asks the
    server for TLS (sslmode prefer, the default, and stronger): the answer's future gets
    ConnectionError("unexpected connection_lost() call") with nobody awaiting it (asyncpg
    #1310 is the same call failing a cancel request). asyncio then logs "Future exception
    was never retrieved" at ERROR, for a connect that already failed and was handled, and
    the test kit's guard fails the test it happens in. Each such future is marked
    retrieved; whoever awaits it still gets the error.
    """
    protocol = getattr(asyncpg.connect_utils, "TLSUpgradeProto", None)
    if protocol is None or getattr(protocol, "_service_retrieved", False):
        return
    init = protocol.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.on_data.add_done_callback(_retrieved)

    protocol.__init__ = __init__
    protocol._service_retrieved = True


_quiet_tls_negotiation()


class PoolArguments(TypedDict):
    dsn: str | None
    password: Callable[[], str] | None
    min_size: int
    max_size: int
    max_inactive_connection_lifetime: float
    timeout: float
    command_timeout: float
    statement_cache_size: int
    target_session_attrs: SessionAttribute


def pool_arguments(settings: Settings) -> PoolArguments:
    """The settings as `asyncpg.create_pool` arguments (also scripts/bench's bare pool)."""
    return {
        "dsn": settings.database_url.for_asyncpg().value,  # libpq's TCP parameters: init
        # DATABASE_PASSWORD_FILE: asyncpg calls it for every new connection.
        "password": (
            None
            if settings.password_file is None
            else functools.partial(read_password, settings.password_file)
        ),
        "min_size": settings.pool_min_size,
        "max_size": settings.pool_max_size,
        "max_inactive_connection_lifetime": settings.pool_max_inactive_lifetime,
        "timeout": settings.connect_timeout,
        "command_timeout": settings.command_timeout,
        "statement_cache_size": settings.statement_cache_size,
        "target_session_attrs": SessionAttribute(settings.session_attrs),
    }


def server_settings(settings: Settings) -> dict[str, str]:
    """The start-up parameters every connection sends: its name, UTC, and the
    idle-in-transaction backstop unless it is off or the URL names its own."""
    # UTC: a timestamptz reads back the same whatever the server's or the process's zone
    # (PgBouncer forwards TimeZone and application_name).
    sent = {"application_name": APPLICATION_NAME, "TimeZone": "UTC"}
    timeout = settings.idle_in_transaction_timeout
    if timeout > 0 and settings.database_url.param(IDLE_IN_TRANSACTION) is None:
        sent[IDLE_IN_TRANSACTION] = str(max(1, round(timeout * 1000)))  # milliseconds
    return sent


def _refused_at_startup(exc: BaseException, parameter: str) -> bool:
    """PgBouncer's answer to a start-up parameter it does not forward (SQLSTATE 08P01)."""
    text = str(exc)
    return (
        isinstance(exc, asyncpg.ProtocolViolationError)
        and "unsupported startup parameter" in text
        and parameter in text
    )


class Opener:
    """Opens and sets up a Database's connections; counts them.

    `create_pool()` gives a new asyncpg pool whose connections all pass through here.
    """

    def __init__(self, settings: Settings, name: str, on_connect: OnConnect | None) -> None:
        self._settings = settings
        self._name = name  # the logs' prefix
        self._on_connect = on_connect
        self.hosts = settings.database_url.for_asyncpg().per_host()
        self._tcp_options = tcp_options(settings.database_url.socket_options)
        self._server_settings = server_settings(settings)
        self._max_lifetime = settings.pool_max_lifetime
        self._password_failure = ""  # DATABASE_PASSWORD_FILE's last error, logged once
        self._setup_failure = ""  # the last on_connect failure logged (once per kind)
        # Plain counts, read at scrape time: no cost per query.
        self.opened = 0
        self.closed = 0  # ... that we closed (lifetime, idle, timeout, expiry, shutdown)
        self.lost = 0  # ... that the server or the network closed (restart, crash, kill)

    async def create_pool(self) -> asyncpg.Pool:
        arguments = pool_arguments(self._settings)
        if self._settings.password_file is not None:
            arguments["password"] = self._read_password  # the same file, a failure logged
        return await asyncpg.create_pool(
            **arguments,
            connection_class=Connection,
            init=self._connection_opened,
            connect=self._connect,
        )

    async def _connect(self, dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
        """One new connection with our start-up parameters (the pool's connect hook)."""
        kwargs["server_settings"] = dict(self._server_settings)
        # A host list: host by host, a connect timeout each; one host: asyncpg's own.
        connect = self._connect_each_host if len(self.hosts) > 1 else asyncpg.connect
        try:
            return await connect(dsn, **kwargs)
        except asyncpg.ProtocolViolationError as exc:
            if not _refused_at_startup(exc, IDLE_IN_TRANSACTION):
                raise
        self._leave_out(IDLE_IN_TRANSACTION)
        kwargs["server_settings"] = dict(self._server_settings)
        return await connect(dsn, **kwargs)

    def _read_password(self) -> str:
        """DATABASE_PASSWORD_FILE, read as asyncpg opens a connection; a file that gives
        none is said once (its path, never a password), and readiness says `unauthorized`."""
        assert self._settings.password_file is not None
        try:
            password = read_password(self._settings.password_file)
        except PasswordFileError as exc:
            if str(exc) != self._password_failure:
                self._password_failure = str(exc)
                log.warning("%s.password_file %s", self._name, exc)
            raise
        self._password_failure = ""
        return password

    def _leave_out(self, parameter: str) -> None:
        """A start-up parameter the server (PgBouncer) refused: never sent again by this
        Database; said once."""
        if parameter not in self._server_settings:
            return  # another connection attempt was refused at the same time
        self._server_settings = {k: v for k, v in self._server_settings.items() if k != parameter}
        log.warning(
            "%s.startup_parameter_refused name=%s (PgBouncer?): not sent; set it on the "
            "server instead (ALTER ROLE … SET)",
            self._name,
            parameter,
        )

    async def _connect_each_host(self, dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
        """A host list, host by host, each with its own DB_CONNECT_TIMEOUT (libpq's way).

        asyncpg spends one timeout on the whole list, so a host that drops packets used
        all of it and the next host was never tried. prefer-standby: every host as a
        standby first, then any.
        """
        attrs = kwargs.pop("target_session_attrs", None)
        passes = [attrs]
        if attrs == SessionAttribute.prefer_standby:
            passes = [SessionAttribute.standby, SessionAttribute.any]
        failure: BaseException | None = None
        for wanted in passes:
            for url in self.hosts:
                try:
                    return await asyncpg.connect(url, target_session_attrs=wanted, **kwargs)
                except PasswordFileError:
                    raise  # the file, not this host: the next host would read it again
                except OPEN_FAILED as exc:
                    failure = exc
        assert failure is not None  # at least one host was tried
        raise failure

    async def _connection_opened(self, connection: asyncpg.Connection) -> None:
        con = cast(Connection, connection)  # connection_class=Connection
        self.opened += 1
        con.full_reset = self._settings.reset_on_release == "full"
        # Keepalives and the user timeout (asyncpg sets only TCP_NODELAY), and the poll
        # that tells at acquire whether the server wrote to or closed it meanwhile.
        con.prepare_socket(self._tcp_options)
        await set_json_codecs(con)
        if self._on_connect is not None:
            await self._run_on_connect(con)
        if self._settings.slow_query_ms > 0:
            con.add_query_logger(self._log_if_slow)
        if self._max_lifetime > 0:
            # A little spread, so connections opened together do not all retire together.
            lifetime = self._max_lifetime * random.uniform(1 - LIFETIME_SPREAD, 1)
            con.retire_at = time.monotonic() + lifetime
        # The listener is called with the pool's proxy when the connection is checked out,
        # and that proxy may already be detached: keep the connection itself.
        con.add_termination_listener(lambda _: self._connection_ended(con))

    async def _run_on_connect(self, con: Connection) -> None:
        """The feature's set-up, after ours and outside any transaction; a failure closes the
        connection (asyncpg does) and is logged once per kind, never per attempt."""
        assert self._on_connect is not None
        try:
            await self._on_connect(con)
            if con.is_in_transaction():
                raise RuntimeError("on_connect left a transaction open")
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if failure != self._setup_failure:
                self._setup_failure = failure
                log.error("%s.on_connect_failed %s", self._name, failure)
            if isinstance(exc, OPEN_FAILED):
                raise  # the readiness word says what the server did
            raise ConnectionSetupFailed() from exc

    def _log_if_slow(self, record: LoggedQuery) -> None:
        """DB_SLOW_QUERY_MS: the statement and its duration, never its parameters."""
        elapsed_ms = record.elapsed * 1000
        if elapsed_ms >= self._settings.slow_query_ms:
            outcome = (
                "" if record.exception is None else f" error={type(record.exception).__name__}"
            )
            log.warning(
                "db.slow_query duration_ms=%.1f%s statement=%s",
                elapsed_ms,
                outcome,
                " ".join(record.query.split()),
            )

    def _connection_ended(self, con: Connection) -> None:
        if con.closed_by_us:
            self.closed += 1
        else:
            self.lost += 1  # the server or the network closed it
