"""Readiness: one word for the database, answered within a hard deadline, single-flight."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .db import Database

# The words `/api/v1/ready` says about the database.
CONNECTED = "connected"
CONNECTING = "connecting"  # the first attempt is under way
DISCONNECTED = "disconnected"
TIMEOUT = "timeout"
UNAUTHORIZED = "unauthorized"
UNKNOWN_DATABASE = "unknown_database"
UNAVAILABLE = "unavailable"  # the server answers but refuses work (starting, too many clients)
ERROR = "error"
CLOSED = "closed"
WORDS = (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    TIMEOUT,
    UNAUTHORIZED,
    UNKNOWN_DATABASE,
    UNAVAILABLE,
    ERROR,
    CLOSED,
)


class ReadinessCheck:
    """`SELECT 1` through the pool (`Database.ping`), answered within `ready_timeout`.

    Concurrent callers share one in-flight check (single-flight), so a flood of probes
    costs one round trip at a time and can never drain the pool. A finished check is
    never reused. The deadline covers acquire, query and release: a hung server cannot
    hold a probe past it.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._check: asyncio.Task[None] | None = None
        self._flight: list[asyncio.Future[str | None]] | None = None  # waiting probes
        self._flight_timer: asyncio.TimerHandle | None = None

    async def check(self) -> str:
        db = self._db
        if db.pool is None or db.closing:
            return CLOSED if db.closing else db.state
        # This runs for every probe: a joiner costs one bare future, not a task and an
        # asyncio.wait. Every waiter of a flight arrived after the flight's timer was set,
        # so that one timer keeps each probe within `ready_timeout` of its arrival.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str | None] = loop.create_future()
        flight = self._flight
        if flight is None:
            flight = self._flight = [waiter]
            self._flight_timer = loop.call_later(
                db.settings.ready_timeout, self._answer, flight, TIMEOUT
            )
            if self._check is None:
                # Else the last check overran its own timeout: this flight waits for it.
                self._check = loop.create_task(self._run_check())
        else:
            flight.append(waiter)
        result = await waiter
        return CLOSED if result is None else result

    def cancel(self) -> None:
        """At close: stop the check; waiting probes answer `closed`."""
        if self._check is not None:
            self._check.cancel()
        if self._flight is not None:  # a check cancelled before its first step
            self._flight_timer.cancel()  # type: ignore[union-attr]
            self._answer(self._flight, None)

    def _answer(self, flight: list[asyncio.Future[str | None]], result: str | None) -> None:
        """Resolve a flight's waiters, once; `None` means the check was cancelled (close)."""
        if self._flight is flight:
            self._flight = None
        if result is not None:
            self._db.set_state(result)
        for waiter in flight:
            if not waiter.done():  # a probe whose request was cancelled
                waiter.set_result(result)

    async def _run_check(self) -> None:
        result: str | None = ERROR
        try:
            result = await self._db.ping(self._db.settings.ready_timeout)
        except asyncio.CancelledError:
            result = None
            raise
        finally:
            # In the step that produced the result, so no later probe can join this check.
            self._check = None
            flight = self._flight
            if flight is not None:
                self._flight_timer.cancel()  # type: ignore[union-attr]
                self._answer(flight, result)
