"""Database: one asyncpg pool with a degraded start, an honest readiness check, a bounded close.

One object, one pool (asyncpg's Pool, psycopg_pool, pgxpool): a read replica is a second
Database, chosen between by service/db/replica.py. Each Database lends and counts its own
connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeAlias, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..backoff import Backoff
from ..histogram import Histogram
from ..settings import Settings
from .connection import (
    CALLER_ERRORS,
    CLIENT_DISCONNECTED,
    Connection,
    DatabaseUnavailable,
    QueryTimeout,
    ServerRefusesWrites,
    behind,
    classify,
    connection_gone,
    discard,
    refuses_writes,
)
from .opening import OPEN_FAILED, OnConnect, Opener
from .singleflight import SingleFlight
from .states import DbState
from .transactions import Isolation, TransactionCounts, run_transaction

log = logging.getLogger("service.db")

# Readiness in one round trip: the server answers, and takes writes. A standby, a demoted
# primary or `default_transaction_read_only` answers false (also through PgBouncer: it is
# a plain query, run on whichever server connection PgBouncer lends).
# The states a busy pool can be in (a check queued behind requests timed out): in these a
# check of a pool with every connection lent waits for one back from an answered query.
_BUSY_POOL_STATES = (DbState.CONNECTED, DbState.TIMEOUT)
READY_QUERY = "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'"
# Reconnecting: 0.25 s doubling to 5 s (service/backoff.py). A server that refuses writes
# is usually mid-switchover behind one address (a proxy, a DNS name): retried quickly, so
# writes resume within a second of it routing to a primary.
RETRY_FIRST_DELAY = 0.25
RETRY_MAX_DELAY = 5.0
READ_ONLY_MAX_DELAY = 0.5
# Seconds a timed-out or cancelled query gets to be cancelled on the server before its
# connection is closed; the pool does not replace it meanwhile (no orphan beside a new one).
CANCEL_TIMEOUT = 2.0
# Time to get a connection (most are instant; DB_ACQUIRE_TIMEOUT is 5 s by default).
ACQUIRE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0)
# Time a handler holds one (a query, a transaction, a slow handler).
HELD_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)

# The wait for a query ended on our side; the query may still run on the server.
_INTERRUPTED = (asyncio.CancelledError, TimeoutError)
# The server refuses writes (see refuses_writes): closed, never reused.
_WRITES_REFUSED = (asyncpg.ReadOnlySQLTransactionError, asyncpg.FeatureNotSupportedError)
# What an acquire may fail with (the readiness word says which): what opening one may.
_ACQUIRE_FAILED = OPEN_FAILED

# What a handler holds: asyncpg's proxy of a pooled connection (subscriptable in stubs only).
Proxy: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
T = TypeVar("T")


class HoldWatch(Protocol):
    """Told while a handler holds a connection (the request's disconnect watch)."""

    def hold(self) -> None: ...

    def let_go(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lent connection, for DB_HOLD_WARNING_MS: the route template and the
    line that acquired it (`orders.py:14`). Never a parameter."""

    route: str
    site: str


class PooledConnection:
    """`async with db.connection() as con`: a bounded acquire, always a release.

    A plain class rather than @asynccontextmanager: it runs on every request.
    """

    __slots__ = ("_db", "_timeout", "_watch", "_holder", "_pool", "_con", "_acquired_at", "_timer")

    def __init__(
        self,
        db: Database,
        timeout: float | None,
        watch: HoldWatch | None,
        holder: Holder | None = None,
    ) -> None:
        self._db = db
        self._timeout = timeout
        self._watch = watch  # a client that leaves cancels the handler (web/disconnect.py)
        self._holder = holder  # given only when DB_HOLD_WARNING_MS is on
        self._pool: asyncpg.Pool | None = None  # the pool that lent it (it may be replaced)
        self._con: Proxy | None = None
        self._acquired_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Proxy:
        self._pool, self._con = pool, con = await self._db._lend(self._timeout)
        self._acquired_at = time.perf_counter()
        if self._watch is not None:
            self._watch.hold()
        if self._holder is not None:
            # Fires while the connection is still held: a hold that never ends is told too.
            self._timer = self._db._warn_when_held_too_long(self._holder)
        return con

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        if self._watch is not None:
            self._watch.let_go()
        if self._timer is not None:
            self._timer.cancel()
        assert self._pool is not None  # set with the connection
        await self._db._take_back(self._pool, con, exc, time.perf_counter() - self._acquired_at)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One snapshot of one pool (psycopg_pool's `get_stats()` is the model)."""

    state: DbState
    size: int  # open connections
    idle: int  # open connections waiting in the pool
    max_size: int  # DB_POOL_MAX_SIZE
    opened: int  # connections the pool opened, ever
    closed: int  # ... that the service closed (lifetime, idle, timeout, expiry, shutdown)
    lost: int  # ... that the server or the network closed (restart, crash, kill)
    waiting: int  # callers waiting for a connection now
    acquire_seconds: Histogram  # time to get one, timeouts included
    acquire_timeouts: int  # callers that got none within DB_ACQUIRE_TIMEOUT
    held_seconds: Histogram  # time a caller held one
    cancelled: dict[str, int]  # queries cancelled on the server, by reason
    writes_refused: int  # handler queries refused as read-only (25006): connection closed
    broken_in_use: int  # lent connections the server or network ended under a handler (503)
    stale_discarded: int  # idle connections the server had ended, closed instead of lent
    releasing: int  # cancelled queries' connections waiting for the server's confirmation
    transactions: dict[str, int]  # run_in_transaction outcomes: committed, rolled_back, …
    transaction_retries: dict[str, int]  # attempts run again, by SQLSTATE (40001, 40P01)


class Database:
    """Owns one pool. Starts without the database, connects in the background, closes bounded.

    Its face: `state`, `connection()`, `check()`, `fetch_within_deadline()`, `stats()`,
    `expire_connections()`, `start()` / `close()` (or `async with`), and `wait_connected()`
    for start-up scripts and tests. `requires_writes=False` (a read replica): any server
    that answers is connected, and a write it refuses is the caller's error.
    """

    def __init__(
        self,
        settings: Settings,
        on_connected: Sequence[Callable[[asyncpg.Pool], Awaitable[None]]] = (),
        *,
        name: str = "db",
        requires_writes: bool = True,
        on_connect: OnConnect | None = None,
    ) -> None:
        self._settings = settings
        self._opener = Opener(settings, name, on_connect)
        self._name = name  # the logs' prefix: db.connected, db_replica.lost, …
        self._requires_writes = requires_writes
        self._max_size = settings.pool_max_size
        self._hold_warning = settings.hold_warning_ms / 1000  # seconds; 0: off
        self._pool: asyncpg.Pool | None = None
        self._state = DbState.CONNECTING
        # Run with the new pool before it is published, so readiness waits for them
        # (start-up migrations, the migration status log).
        self._on_connected = tuple(on_connected)
        self._last_failure = ""
        self._connector: asyncio.Task[None] | None = None
        self._readiness = SingleFlight(
            self._check_once,
            deadline=settings.ready_timeout,
            on_timeout=DbState.TIMEOUT,
            on_error=DbState.ERROR,
            on_result=self._set_state,
        )
        self._closing = False
        # Plain counts, read at scrape time through stats(): no cost per query.
        self._waiting = 0
        self._lent = 0  # connections out (and being released)
        self._acquire_seconds = Histogram(ACQUIRE_BUCKETS)
        self._acquire_timeouts = 0
        self._held_seconds = Histogram(HELD_BUCKETS)
        self._cancelled = {"timeout": 0, "disconnect": 0}
        self._writes_refused = 0
        self._broken_in_use = 0
        self._stale_discarded = 0
        self._releasing: set[asyncio.Task[None]] = set()  # cancelled queries being released
        self._retiring: set[asyncio.Task[bool]] = set()  # pools left for a server refusing writes
        self._confirming: asyncio.Task[DbState] | None = None  # a check after a lost connection
        # A check of a busy pool waits on this for a connection back from an answered query.
        self._answered: asyncio.Future[None] | None = None
        self._refused_at_check = 0  # _writes_refused when the last query of a check was sent
        self._transactions = TransactionCounts()

    async def __aenter__(self) -> Database:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def state(self) -> DbState:
        """The last known readiness word; it changes only on a transition, logged once."""
        return self._state

    @property
    def connected(self) -> bool:
        """The pool exists and the last check found the server as wanted."""
        return self._pool is not None and self._state == DbState.CONNECTED

    def stats(self) -> PoolStats:
        """Counts and sizes now; cheap enough for every scrape."""
        pool = self._pool
        return PoolStats(
            state=self._state,
            size=pool.get_size() if pool is not None else 0,
            idle=pool.get_idle_size() if pool is not None else 0,
            max_size=self._max_size,
            opened=self._opener.opened,
            closed=self._opener.closed,
            lost=self._opener.lost,
            waiting=self._waiting,
            acquire_seconds=self._acquire_seconds.copy(),
            acquire_timeouts=self._acquire_timeouts,
            held_seconds=self._held_seconds.copy(),
            cancelled=dict(self._cancelled),
            writes_refused=self._writes_refused,
            broken_in_use=self._broken_in_use,
            stale_discarded=self._stale_discarded,
            releasing=len(self._releasing),
            transactions=dict(self._transactions.outcomes),
            transaction_retries=dict(self._transactions.retries),
        )

    def start(self) -> None:
        """Begin connecting in the background; the service serves liveness meanwhile."""
        log.info("%s.start target=%s", self._name, self._settings.database_url.redacted)
        self._connector = asyncio.get_running_loop().create_task(
            self._connect_forever(), name=f"{self._name}-connect"
        )

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the pool exists (tests, start-up scripts); False on timeout."""
        if self._connector is None:
            return self._pool is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._connector), timeout)
        except TimeoutError:
            return False
        return self._pool is not None

    @property
    def warns_on_long_holds(self) -> bool:
        """DB_HOLD_WARNING_MS is on: callers pass a Holder to `connection()`."""
        return self._hold_warning > 0

    def connection(
        self,
        timeout: float | None = None,
        *,
        watch: HoldWatch | None = None,
        holder: Holder | None = None,
    ) -> PooledConnection:
        """A connection for one block: bounded acquire, always released, even on error.

        Waits at most `timeout` (DB_ACQUIRE_TIMEOUT) for a free connection; a 503 word
        (DatabaseUnavailable) otherwise. `watch` is told while the block holds it;
        `holder` is named in DB_HOLD_WARNING_MS's warning.
        """
        bound = self._settings.acquire_timeout if timeout is None else timeout
        return PooledConnection(self, bound, watch, holder)

    async def run_in_transaction(
        self,
        fn: Callable[[Proxy], Awaitable[T]],
        *,
        isolation: Isolation = "read_committed",
        read_only: bool = False,
        watch: HoldWatch | None = None,
        holder: Holder | None = None,
    ) -> T:
        """`await fn(con)` in a transaction, committed, its result returned; run again from
        the start on a serialization failure or a deadlock (db/transactions.py).

        For work outside a request (a job, a script); handlers use the request's
        `run_in_transaction(request, fn)`.
        """
        async with self.connection(watch=watch, holder=holder) as con:
            return await run_transaction(
                con,  # type: ignore[arg-type]  # the proxy forwards every Connection call
                fn,  # type: ignore[arg-type]
                isolation=isolation,
                read_only=read_only,
                retries=self._settings.transaction_retries,
                counts=self._transactions,
            )

    async def fetch_within_deadline(self, query: str) -> Any:
        """One value through the pool within DB_READY_TIMEOUT; None if it cannot be had."""
        if self._pool is None or self._closing:
            return None
        try:
            return await self._fetch_or_raise(query)
        except Exception:
            return None

    async def expire_connections(self) -> None:
        """Replace every pooled connection: idle ones at once, lent ones at release."""
        if self._pool is not None:
            await self._pool.expire_connections()

    async def check(self) -> DbState:
        """Readiness: READY_QUERY through the pool, answered within DB_READY_TIMEOUT.

        Concurrent callers share one in-flight check (single-flight), so a flood of probes
        costs one round trip at a time and can never drain the pool. A finished check is
        never reused. The deadline covers acquire, query and release: a hung server cannot
        hold a probe past it. A busy pool (every connection lent, callers queued) answers
        without queueing: a connection back from an answered query (_answered_return).
        """
        if self._pool is None or self._closing:
            return DbState.CLOSED if self._closing else self._state
        result = await self._readiness.run()
        return DbState.CLOSED if result is None else result

    async def close(self) -> None:
        """Close the pool within `close_timeout`, then terminate what is left."""
        self._closing = True
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        self._readiness.cancel()
        if self._confirming is not None:
            await asyncio.gather(self._confirming, return_exceptions=True)
        pool, self._pool = self._pool, None
        if self._retiring:  # each bounded by close_timeout
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if pool is None:
            return
        if await self._close_pool(pool):
            log.info("%s.closed", self._name)
        if self._releasing:  # ended by the close or terminate above
            await asyncio.gather(*self._releasing, return_exceptions=True)
        self._state = DbState.CLOSED

    # -- lending (PooledConnection) ------------------------------------------------------

    async def _lend(self, timeout: float | None) -> tuple[asyncpg.Pool, Proxy]:
        """A connection within `timeout`, or DatabaseUnavailable with the reason.

        While the pool has a free slot, acquiring cannot wait for one, so it takes no
        timer; only when every slot is lent is the wait bounded, by `asyncio.timeout`
        (`pool.acquire(timeout=)` would run `asyncio.wait_for`: a task per acquire on
        Python 3.11). Opening a connection for a free slot is bounded by DB_CONNECT_TIMEOUT.
        Why: docs/performance.md.
        """
        pool = self._pool
        if pool is None:
            raise DatabaseUnavailable(self._state)
        start = time.perf_counter()
        self._waiting += 1
        try:
            if timeout is None or self._lent < self._max_size:
                con = await self._lendable(pool)
            else:
                async with asyncio.timeout(timeout):
                    con = await self._lendable(pool)
        except _ACQUIRE_FAILED as exc:
            if isinstance(exc, TimeoutError):
                self._acquire_timeouts += 1
            reason = classify(exc)
            if reason == DbState.READ_ONLY and pool is self._pool and self._requires_writes:
                # A replaced connection reached a server that now refuses writes: stop
                # connecting to it per request, and reconnect in the background.
                self._reconnect()
            raise DatabaseUnavailable(reason) from exc
        finally:
            self._waiting -= 1
            self._acquire_seconds.observe(time.perf_counter() - start)
        self._lent += 1
        return pool, con

    async def _lendable(self, pool: asyncpg.Pool) -> Proxy:
        """A pooled connection whose server has not written to or closed it meanwhile.

        One that has (the server is shutting down or killed its backend) is closed here
        and the next one taken; a closed slot reconnects. Bounded: past a pool's worth of
        dead ones, the server is taken as gone.
        """
        for _ in range(self._max_size + 1):
            con: Proxy = await pool.acquire()
            if not cast(Connection, behind(con)).server_went_away():  # not via the proxy
                return con
            self._stale_discarded += 1
            discard(con)
        raise asyncpg.ConnectionDoesNotExistError("the server closed every pooled connection")

    async def _take_back(
        self, pool: asyncpg.Pool, con: Proxy, exc: BaseException | None, held: float
    ) -> None:
        """Release a lent connection; never raises but to turn the block's error into a 503."""
        self._held_seconds.observe(held)
        if exc is not None and isinstance(exc, _INTERRUPTED):
            # asyncpg sent the server a cancel request when the wait ended; the release
            # waits for its answer, so the query is gone before the slot is reused.
            self._release_later(pool, con)
            if isinstance(exc, TimeoutError):
                self._cancelled["timeout"] += 1
                raise QueryTimeout() from exc
            if exc.args == (CLIENT_DISCONNECTED,):
                self._cancelled["disconnect"] += 1
            return
        gone = exc is not None and connection_gone(exc, con)
        writes_refused = answered = False
        try:
            if gone or (
                isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, CALLER_ERRORS)
            ):
                discard(con)  # broken, or misused: nothing to cancel, nothing to reuse
            elif exc is not None and self._refuses_writes(exc):
                # A demoted primary (or a standby): this connection is closed, and every
                # idle one is replaced at its next acquire, through the host list.
                writes_refused = True
                self._writes_refused += 1
                await pool.expire_connections()
                await con.close(timeout=self._settings.close_timeout)
            elif time.monotonic() > cast(Connection, con).retire_at:
                # DB_POOL_MAX_LIFETIME (SQLAlchemy's pool_recycle): retire old connections
                # at release, so the caller never waits for the replacement.
                await con.close(timeout=self._settings.close_timeout)
            await pool.release(con)  # nothing to do for a connection asyncpg took back
            answered = not (gone or writes_refused)
        except Exception:
            # The reset or close failed (the server went away meanwhile): the connection is
            # dropped, and the handler's own outcome stands.
            discard(con)
        finally:
            self._lent -= 1
        waiter = self._answered
        if waiter is not None and answered and pool is self._pool and not waiter.done():
            waiter.set_result(None)
        if gone:
            # The server or the network ended it under the handler: 503, never a 500.
            self._lost_in_use()
            if isinstance(exc, DatabaseUnavailable):
                return  # already says so (a COMMIT whose outcome is unknown)
            raise DatabaseUnavailable(DbState.DISCONNECTED) from exc
        if writes_refused:
            raise DatabaseUnavailable(DbState.READ_ONLY) from exc

    def _warn_when_held_too_long(self, holder: Holder) -> asyncio.TimerHandle:
        """One warning, DB_HOLD_WARNING_MS after the acquire, unless released before
        (HikariCP's leakDetectionThreshold)."""
        return asyncio.get_running_loop().call_later(
            self._hold_warning,
            log.warning,
            "%s.held_too_long route=%s acquired_at=%s over_ms=%g",
            self._name,
            holder.route,
            holder.site,
            self._settings.hold_warning_ms,
        )

    def _refuses_writes(self, exc: BaseException) -> bool:
        """A write the server refused as read-only, on a pool that needs writes."""
        return self._requires_writes and isinstance(exc, _WRITES_REFUSED) and refuses_writes(exc)

    def _lost_in_use(self) -> None:
        """A lent connection died under its handler: counted; readiness looks again now.

        No log line per request: if the server is gone, the check logs `db.lost` once, and
        replaces every idle connection.
        """
        self._broken_in_use += 1
        if self._state != DbState.CONNECTED or self._closing:
            return
        if self._confirming is None or self._confirming.done():
            loop = asyncio.get_running_loop()
            self._confirming = loop.create_task(self.check(), name=f"{self._name}-confirm")

    def _release_later(self, pool: asyncpg.Pool, con: Proxy) -> None:
        """Release after the server confirms the cancel, within CANCEL_TIMEOUT, else close.

        In the background: the caller answers at once, and the slot stays taken until the
        query is gone, so the pool never opens a replacement beside a running orphan.
        """
        task = asyncio.get_running_loop().create_task(self._release_bounded(pool, con))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_bounded(self, pool: asyncpg.Pool, con: Proxy) -> None:
        try:
            await pool.release(con, timeout=CANCEL_TIMEOUT)
        except (Exception, asyncio.CancelledError):
            # asyncpg terminated it: a hung server never confirmed the cancel. A proxy the
            # pool already took back (an expired connection whose close timed out) is
            # detached and refuses every call; its connection was aborted then.
            discard(con)
        finally:
            self._lent -= 1

    # -- readiness -----------------------------------------------------------------------

    async def _fetch_or_raise(self, query: str) -> Any:
        """fetch_within_deadline, raising what went wrong (the readiness check classifies it)."""
        async with asyncio.timeout(self._settings.ready_timeout):
            # No acquire timeout of its own: the one above bounds it.
            async with PooledConnection(self, None, None) as con:
                value = await con.fetchval(query)
                cast(Connection, con).skip_next_reset()  # forwarded by the proxy
        return value

    async def _check_once(self) -> DbState:
        """READY_QUERY within DB_READY_TIMEOUT (acquire, query and release), or, when the
        probe would queue for a connection (every one lent, or callers waiting already), a
        connection coming back from a query the server answered."""
        # Read now: a readiness flight's timer may report a timeout before this ends.
        was_connected = self._state == DbState.CONNECTED
        result: DbState
        try:
            if (
                (self._waiting or self._lent >= self._max_size)
                and self._state in _BUSY_POOL_STATES
                and self._writes_refused == self._refused_at_check
            ):
                await self._answered_return()
                return DbState.CONNECTED
            self._refused_at_check = self._writes_refused
            writable = await self._fetch_or_raise(READY_QUERY)
        except DatabaseUnavailable as exc:
            result = exc.reason
        except Exception as exc:
            result = classify(exc)
        else:
            if writable or not self._requires_writes:
                return DbState.CONNECTED
            result = DbState.READ_ONLY
        if result == DbState.READ_ONLY and self._requires_writes:
            self._reconnect()  # logged once: db.lost reason=read_only
        elif was_connected and self._pool is not None:
            # Idle connections opened before an outage may be dead without knowing it yet:
            # mark them all for replacement so none reaches a caller after a restart.
            await self._pool.expire_connections()
        return result

    async def _answered_return(self) -> None:
        """Wait, within DB_READY_TIMEOUT, for a lent connection to come back from a query the
        server answered (no error of the connection, no write refused).

        The check of a busy pool: queued behind the requests for a connection, the probe
        would time out although the server answers every query (and a service taken out
        of rotation because it is busy turns a traffic spike into an outage). A server that
        hangs returns nothing, and the check times out as before. Writes: the answer stands
        only while no write was refused since the last check's query; a refusal sends the
        next check to the server.
        """
        self._answered = waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._settings.ready_timeout):
                await waiter
        finally:
            self._answered = None

    def _set_state(self, state: DbState) -> None:
        """Record the readiness word; a change (only) is logged, once."""
        previous, self._state = self._state, state
        if state == previous:
            return
        size = self._pool.get_size() if self._pool is not None else 0
        if state == DbState.CONNECTED:
            log.info("%s.connected pool_size=%d", self._name, size)
        elif previous == DbState.CONNECTED:
            log.warning("%s.lost reason=%s", self._name, state)
        else:
            log.warning("%s.unavailable reason=%s", self._name, state)

    # -- the pool's life -----------------------------------------------------------------

    def _reconnect(self) -> None:
        """The server refuses writes: leave it, and connect again through the host list.

        The pool is closed in the background (lent connections finish first, within
        DB_CLOSE_TIMEOUT), so no connection stays on a demoted primary; meanwhile callers
        get 503 `read_only` at once, and the connector retries until a host of the list
        takes writes (a multi-host URL: the new primary).
        """
        pool, self._pool = self._pool, None
        self._set_state(DbState.READ_ONLY)
        if pool is None or self._closing:
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._close_pool(pool))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        self._connector = loop.create_task(self._connect_forever(), name=f"{self._name}-connect")

    async def _close_pool(self, pool: asyncpg.Pool) -> bool:
        """Close within `close_timeout` (lent connections first come back), else terminate."""
        timeout = self._settings.close_timeout
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except TimeoutError:
            log.warning("%s.close timed out after %.1fs; terminating", self._name, timeout)
            pool.terminate()
        except Exception as exc:
            log.warning("%s.close failed (%s); terminating", self._name, type(exc).__name__)
            pool.terminate()
        else:
            return True
        return False

    async def _connect_forever(self) -> None:
        backoff = Backoff(RETRY_FIRST_DELAY, RETRY_MAX_DELAY)
        logged = 0.0
        # This loop's last failure, not the state: _reconnect sets read_only before the
        # first attempt, which then kept the outage's cap (5 s) instead of 0.5 s.
        failed: DbState | None = None
        while not self._closing:
            try:
                pool = await self._connect_once()
            except Exception as exc:
                reason = classify(exc)
                if reason != failed:  # a new kind of failure starts over
                    failed = reason
                    quick = reason == DbState.READ_ONLY
                    backoff.reset(cap=READ_ONLY_MAX_DELAY if quick else RETRY_MAX_DELAY)
                self._set_state(reason)
                if backoff.delay != logged:  # once per step of the backoff, not per attempt
                    log.info("%s.retry in %.1fs", self._name, backoff.delay)
                    logged = backoff.delay
                await asyncio.sleep(backoff.next() or RETRY_FIRST_DELAY)  # no budget: never None
                continue
            self._pool = pool
            self._set_state(DbState.CONNECTED)
            return

    async def _connect_once(self) -> asyncpg.Pool:
        """A new pool that passed the start-up hooks; nothing is left open otherwise."""
        # Each host of a list gets its own connect timeout (twice, for prefer-standby).
        hosts = len(self._opener.hosts)
        attempts = 2 * hosts if hosts > 1 else 1
        async with asyncio.timeout(self._settings.connect_timeout * (attempts + 1)):
            pool = await self._opener.create_pool()
            if self._requires_writes:
                # target_session_attrs=any (or prefer-standby) may land on a standby: not
                # published, so readiness never flaps between connected and read_only.
                try:
                    async with pool.acquire() as con:
                        writable = await con.fetchval(READY_QUERY)
                except BaseException:
                    pool.terminate()
                    raise
                if not writable:
                    pool.terminate()
                    raise ServerRefusesWrites()
        try:
            for hook in self._on_connected:
                await hook(pool)
        except BaseException as exc:  # also cancelled by close(): never published
            pool.terminate()
            failure = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, Exception) and failure != self._last_failure:
                self._last_failure = failure  # logged once, not at every retry
                log.error("%s.startup_failed %s", self._name, failure)
            raise
        return pool
