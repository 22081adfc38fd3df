"""Backoff: the one policy for waiting before trying again (psycopg_pool's AttemptWithBackoff).

Used by the connector (reconnecting to the database), the migration runner (a statement's
lock timeout, the migration lock) and the transaction retries (serialization failures).
"""

from __future__ import annotations

import random
import time


class Backoff:
    """Delays that double from `first` to `cap`, each spread by ±`jitter`, within a budget.

    Spread, so that callers failing at the same instant do not all come back at the same
    instant. `next()` gives the delay before the next attempt, or None once `budget`
    seconds have passed since the first attempt (None: no budget). The last delay is cut
    to what is left of the budget.
    """

    __slots__ = ("first", "cap", "jitter", "budget", "attempts", "_delay", "_started")

    def __init__(
        self,
        first: float = 0.25,
        cap: float = 5.0,
        *,
        jitter: float = 0.2,
        budget: float | None = None,
    ) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self.budget = budget
        self.attempts = 1  # the attempt under way
        self._delay = first
        self._started = time.monotonic()

    @property
    def delay(self) -> float:
        """The next delay before its spread (it changes once per step, not per attempt)."""
        return self._delay

    @property
    def elapsed(self) -> float:
        """Seconds since the first attempt."""
        return time.monotonic() - self._started

    def next(self) -> float | None:
        """Seconds to wait before the next attempt; None when the budget is spent."""
        delay = self._delay * random.uniform(1 - self.jitter, 1 + self.jitter)
        if self.budget is not None:
            left = self.budget - self.elapsed
            if left <= 0:
                return None
            delay = min(delay, left)
        self._delay = min(self._delay * 2, self.cap)
        self.attempts += 1
        return delay

    def reset(self, cap: float | None = None) -> None:
        """Start over from `first` (a new kind of failure), with another `cap` if given."""
        self._delay = self.first
        if cap is not None:
            self.cap = cap
