"""Wait until a condition holds, within a bound: no loop in the suite or the scripts waits forever.

The condition is a callable returning something truthy once it holds; that value is returned.
An exception it raises ends the wait at once (a process that exited, say). On timeout the
error names what was awaited and the last value seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 0.05


class WaitTimeout(TimeoutError):
    """A condition did not hold within its bound."""


def _timed_out(what: str, timeout: float, last: object) -> WaitTimeout:
    return WaitTimeout(f"waited {timeout:g} s for {what}; last seen: {last!r}")


def wait_until(
    condition: Callable[[], T],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
) -> T:
    """Call `condition` every `interval` s until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
) -> T:
    """`wait_until` on the running loop; `condition` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        await asyncio.sleep(interval)
