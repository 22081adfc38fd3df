"""Single-flight with a hard deadline: concurrent callers share one run of a probe.

A *flight* is the set of callers one run of the probe answers: those who arrived while it
ran. The next caller after it ends starts a new flight (a result is never reused).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("service.singleflight")


class SingleFlight(Generic[T]):
    """`await flight.run()`: one `probe()` at a time, each caller answered within `deadline`.

    Callers that arrive while a probe runs join it (a flood costs one probe at a time); a
    finished result is never reused. A caller not answered within `deadline` of its
    flight's start gets `on_timeout` (`on_error` if the probe raises); a probe that
    overruns keeps running, and the next flight waits for it rather than starting a
    second one. Every result (the probe's or the timeout) is passed to `on_result` once.
    `cancel()` answers waiting callers `None`.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[T]],
        *,
        deadline: float,
        on_timeout: T,
        on_error: T,
        on_result: Callable[[T], object] = lambda result: None,
    ) -> None:
        self._probe = probe
        self.deadline = deadline  # seconds; read as each flight starts
        self._on_timeout = on_timeout
        self._on_error = on_error
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None
        self._flight: list[asyncio.Future[T | None]] | None = None  # the waiting callers
        self._timer: asyncio.TimerHandle | None = None

    async def run(self) -> T | None:
        """The current flight's result; `None` when cancelled."""
        # This runs for every caller: a joiner costs one bare future, not a task and an
        # asyncio.wait. Every waiter of a flight arrived after the flight's timer was set,
        # so that one timer keeps each caller within `deadline` of its arrival.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T | None] = loop.create_future()
        flight = self._flight
        if flight is None:
            flight = self._flight = [waiter]
            self._timer = loop.call_later(self.deadline, self._answer, flight, self._on_timeout)
            if self._task is None:
                self._task = loop.create_task(self._run_probe())
        else:
            flight.append(waiter)
        return await waiter

    def cancel(self) -> None:
        """Stop the probe; waiting callers get `None`."""
        if self._task is not None:
            self._task.cancel()
        flight = self._flight
        if flight is not None:  # a probe cancelled before its first step
            self._answer(flight, None)

    def _answer(self, flight: list[asyncio.Future[T | None]], result: T | None) -> None:
        """Resolve a flight's waiters, once."""
        if self._flight is flight:
            self._flight = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if result is not None:
            self._on_result(result)
        for waiter in flight:
            if not waiter.done():  # a caller whose own task was cancelled
                waiter.set_result(result)

    async def _run_probe(self) -> None:
        result: T | None = self._on_error
        try:
            result = await self._probe()
        except asyncio.CancelledError:
            result = None
            raise
        except Exception:
            log.exception("singleflight.probe_failed")  # a bug in the probe: answered on_error
        finally:
            # In the step that produced the result, so no later caller can join this run.
            self._task = None
            flight = self._flight
            if flight is not None:
                self._answer(flight, result)
