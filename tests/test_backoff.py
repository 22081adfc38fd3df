"""The one backoff policy: doubling delays with jitter, a cap, a budget, a reset."""

from __future__ import annotations

import pytest

from service.backoff import Backoff


def _within(delays: list[float | None], expected: list[float], jitter: float = 0.2) -> bool:
    return all(
        d is not None and (1 - jitter) * e <= d <= (1 + jitter) * e
        for d, e in zip(delays, expected, strict=True)
    )


def test_delays_double_to_the_cap_each_spread_by_the_jitter() -> None:
    backoff = Backoff(0.25, 5.0)
    delays = [backoff.next() for _ in range(8)]
    assert _within(delays, [0.25, 0.5, 1, 2, 4, 5, 5, 5])
    assert len(set(delays)) > 1  # spread: not all the same instant
    assert backoff.attempts == 9


def test_no_jitter_gives_the_exact_steps() -> None:
    backoff = Backoff(0.05, 0.5, jitter=0.0)
    assert [backoff.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.4, 0.5]


def test_a_spent_budget_ends_the_attempts() -> None:
    assert Backoff(budget=0).next() is None
    backoff = Backoff(10.0, 10.0, jitter=0.0, budget=60)
    delay = backoff.next()
    assert delay is not None and delay <= 10.0


def test_reset_starts_over_with_another_cap() -> None:
    backoff = Backoff(0.25, 5.0, jitter=0.0)
    for _ in range(4):
        backoff.next()
    assert backoff.delay == 4.0
    backoff.reset(cap=0.5)
    assert [backoff.next() for _ in range(3)] == [0.25, 0.5, 0.5]
    assert backoff.delay == pytest.approx(0.5)
