"""The database: one asyncpg pool, a degraded start, an honest readiness check, a bounded close."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .readiness import (
    CLOSED,
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    ERROR,
    TIMEOUT,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNKNOWN_DATABASE,
    ReadinessCheck,
)
from .settings import Settings

log = logging.getLogger("service.db")

READY_QUERY = "SELECT 1"
APPLICATION_NAME = "service"
RETRY_FIRST_DELAY = 0.25
RETRY_MAX_DELAY = 5.0

# Errors after which a connection's state is unknown: it is closed, never reused.
_BROKEN = (asyncio.CancelledError, TimeoutError, OSError, asyncpg.InterfaceError)


class DatabaseUnavailable(Exception):
    """No connection could be had within the bounded wait; the handler answers 503."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Connection(asyncpg.Connection):
    """An asyncpg connection that knows its age, so the pool can retire old ones."""

    __slots__ = ("opened_at", "closed_by_us", "_nothing_to_reset")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened_at = time.monotonic()
        # Metrics: a close we start (retire, expire, timeout, shutdown) is not a "lost" one.
        self.closed_by_us = False
        self._nothing_to_reset = False

    def skip_next_reset(self) -> None:
        """Only `SELECT 1` ran since acquire: release without the reset round trip.

        asyncpg resets every released connection (advisory locks, cursors, LISTEN, SET);
        after the readiness query there is nothing to reset, and the round trip was half
        of each check's time, with every waiting probe parked behind it.
        """
        self._nothing_to_reset = True

    def get_reset_query(self) -> str:
        if self._nothing_to_reset:
            self._nothing_to_reset = False
            return ""
        return super().get_reset_query()

    async def close(self, *, timeout: float | None = None) -> None:
        self.closed_by_us = self.closed_by_us or not self.is_closed()
        await super().close(timeout=timeout)

    def terminate(self) -> None:
        self.closed_by_us = self.closed_by_us or not self.is_closed()
        super().terminate()


def classify(exc: BaseException) -> str:
    """One word for why the database is not usable; never the exception's text."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return UNAUTHORIZED
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return UNKNOWN_DATABASE
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return UNAVAILABLE
    if isinstance(
        exc,
        OSError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError,
    ):
        return DISCONNECTED
    return ERROR


def pool_arguments(settings: Settings) -> dict[str, Any]:
    """The settings as `asyncpg.create_pool` arguments (also scripts/bench's bare pool)."""
    return {
        "dsn": settings.database_url.value,
        "min_size": settings.pool_min_size,
        "max_size": settings.pool_max_size,
        "max_inactive_connection_lifetime": settings.pool_max_inactive_lifetime,
        "timeout": settings.connect_timeout,
        "command_timeout": settings.command_timeout,
        "statement_cache_size": settings.statement_cache_size,
        "target_session_attrs": settings.database_url.target_session_attrs,
    }


class _PooledConnection:
    """`async with db.connection() as con`: a bounded acquire, always a release.

    A plain class rather than @asynccontextmanager: it runs on every request.
    """

    __slots__ = ("_db", "_timeout", "_pool", "_con")

    def __init__(self, db: Database, timeout: float | None) -> None:
        self._db = db
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._con: PoolConnectionProxy | None = None

    async def __aenter__(self) -> PoolConnectionProxy:
        pool = self._pool = self._db.pool
        if pool is None:
            raise DatabaseUnavailable(self._db.state)
        try:
            self._con = await pool.acquire(timeout=self._timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(classify(exc)) from exc
        return self._con

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        try:
            if exc is not None and isinstance(exc, _BROKEN):
                # A timed-out or cancelled query leaves the connection mid-protocol; a normal
                # release would wait for the server to confirm the cancel, which a hung server
                # never does. Closing the socket is immediate and the pool opens a fresh one.
                con.terminate()
            elif time.monotonic() - con.opened_at > self._db.max_lifetime > 0:
                # The original design's hourly recycle: retire old connections at release,
                # so the caller never waits for the replacement.
                await con.close(timeout=self._db.settings.close_timeout)
            await self._pool.release(con)  # type: ignore[union-attr]
        except Exception:
            # The reset or close failed (the server went away meanwhile): the connection is
            # dropped, and the handler's own outcome stands.
            if not con.is_closed():
                con.terminate()


class Database:
    """Owns the pool. Starts without the database, connects in the background, closes bounded.

    `state` is the last known readiness word; it changes only on a transition, and each
    transition is logged once.
    """

    def __init__(
        self,
        settings: Settings,
        on_connected: Sequence[Callable[[asyncpg.Pool], Awaitable[None]]] = (),
    ) -> None:
        self.settings = settings
        self.max_lifetime = settings.pool_max_lifetime
        self.pool: asyncpg.Pool | None = None
        self.state = CONNECTING
        # Run with the new pool before it is published, so readiness waits for them
        # (start-up migrations, the migration status log).
        self.on_connected = tuple(on_connected)
        self._last_failure = ""
        self._connector: asyncio.Task[None] | None = None
        self.readiness = ReadinessCheck(self)
        self.closing = False
        # Plain counts, read by service/metrics.py at scrape time: no cost per query.
        self.connections_opened = 0
        self.connections_lost = 0
        self.connections_closed = 0

    async def __aenter__(self) -> Database:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Begin connecting in the background; the service serves liveness meanwhile."""
        log.info("db.start target=%s", self.settings.database_url.redacted)
        self._connector = asyncio.get_running_loop().create_task(
            self._connect_forever(), name="db-connect"
        )

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the pool exists (tests, start-up scripts); False on timeout."""
        if self._connector is None:
            return self.pool is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._connector), timeout)
        except TimeoutError:
            return False
        return self.pool is not None

    def connection(self, timeout: float | None = None) -> _PooledConnection:
        """A request-scoped connection: bounded acquire, always released, even on error."""
        return _PooledConnection(
            self, self.settings.acquire_timeout if timeout is None else timeout
        )

    async def _create_pool(self) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            **pool_arguments(self.settings),
            connection_class=Connection,
            server_settings={"application_name": APPLICATION_NAME},
            init=self._connection_opened,
        )

    async def _connection_opened(self, con: Connection) -> None:
        self.connections_opened += 1
        # The listener is called with the pool's proxy when the connection is checked out,
        # and that proxy may already be detached: keep the connection itself.
        con.add_termination_listener(lambda _: self._connection_ended(con))

    def _connection_ended(self, con: Connection) -> None:
        if con.closed_by_us:
            self.connections_closed += 1
        else:
            self.connections_lost += 1  # the server or the network closed it

    async def _connect_forever(self) -> None:
        delay = RETRY_FIRST_DELAY
        while not self.closing:
            try:
                pool = await self._connect_once()
            except Exception as exc:
                self.set_state(classify(exc))
                jittered = delay * random.uniform(0.8, 1.2)
                log.info("db.retry in %.1fs", jittered)
                await asyncio.sleep(jittered)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            self.pool = pool
            self.set_state(CONNECTED)
            return

    async def _connect_once(self) -> asyncpg.Pool:
        """A new pool that passed the start-up hooks; nothing is left open otherwise."""
        async with asyncio.timeout(self.settings.connect_timeout * 2):
            pool = await self._create_pool()
        try:
            for hook in self.on_connected:
                await hook(pool)
        except BaseException as exc:  # also cancelled by close(): never published
            pool.terminate()
            failure = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, Exception) and failure != self._last_failure:
                self._last_failure = failure  # logged once, not at every retry
                log.error("db.startup_failed %s", failure)
            raise
        return pool

    def set_state(self, state: str) -> None:
        """Record the readiness word; a change (only) is logged, once."""
        previous, self.state = self.state, state
        if state == previous:
            return
        size = self.pool.get_size() if self.pool is not None else 0
        if state == CONNECTED:
            log.info("db.connected pool_size=%d", size)
        elif previous == CONNECTED:
            log.warning("db.lost reason=%s", state)
        else:
            log.warning("db.unavailable reason=%s", state)

    async def check(self) -> str:
        """Readiness: one word, answered within `ready_timeout` (see service.readiness)."""
        return await self.readiness.check()

    async def ping(self, timeout: float) -> str:
        """`SELECT 1` within `timeout` (acquire, query and release); the readiness word."""
        # Read now: a readiness flight's timer may report a timeout before this ends.
        was_connected = self.state == CONNECTED
        try:
            async with asyncio.timeout(timeout):
                # No acquire timeout of its own: the one above bounds it, and asyncpg's
                # wait_for would add a task to every check (Python < 3.12).
                async with _PooledConnection(self, None) as con:
                    await con.fetchval(READY_QUERY)
                    con.skip_next_reset()
        except DatabaseUnavailable as exc:
            result = exc.reason
        except Exception as exc:
            result = classify(exc)
        else:
            return CONNECTED
        if was_connected and self.pool is not None:
            # Idle connections opened before an outage may be dead without knowing it yet:
            # mark them all for replacement so none reaches a caller after a restart.
            await self.pool.expire_connections()
        return result

    async def close(self) -> None:
        """Close the pool within `close_timeout`, then terminate what is left."""
        self.closing = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        self.readiness.cancel()
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.settings.close_timeout)
        except (Exception, TimeoutError):  # noqa: B014
            log.warning("db.close timed out after %.1fs; terminating", self.settings.close_timeout)
            pool.terminate()
        else:
            log.info("db.closed")
        self.state = CLOSED
