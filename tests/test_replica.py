"""Replica lag in WAL positions (pure), and read_only=True with no replica configured."""

from __future__ import annotations

import math

from service.db import Database, Replicas
from service.db.replica import LagTracker
from service.settings import Settings


def test_an_idle_primary_leaves_a_current_replica_current() -> None:
    # Replay-timestamp lag would read an hour here: nothing was written for an hour.
    tracker = LagTracker()
    for second in range(3600):
        tracker.primary_at(second, 1000)
        tracker.replica_at(1000)
    assert tracker.lag(3599.25) == 0.25


def test_lag_is_the_time_since_the_replica_had_what_the_primary_had() -> None:
    tracker = LagTracker()
    tracker.primary_at(0.0, 100)
    tracker.replica_at(50)
    assert tracker.lag(1.0) == math.inf  # never seen current yet
    tracker.primary_at(1.0, 200)
    tracker.replica_at(150)  # has all the primary had at 0.0, not what it had at 1.0
    assert tracker.lag(3.0) == 3.0
    tracker.primary_at(4.0, 300)
    tracker.replica_at(300)
    assert tracker.lag(4.5) == 0.5


def test_a_new_primary_behind_the_old_one_starts_over() -> None:
    tracker = LagTracker()
    tracker.primary_at(0.0, 500)
    tracker.replica_at(500)
    tracker.primary_at(1.0, 900)
    tracker.primary_at(2.0, 400)  # another server: its positions are not comparable
    tracker.replica_at(400)
    assert tracker.lag(2.5) == 0.5


def test_samples_are_bounded_while_a_replica_never_catches_up() -> None:
    tracker = LagTracker(max_samples=10)
    for second in range(100):
        tracker.primary_at(second, 1000 + second)
        tracker.replica_at(0)
    assert len(tracker) == 10
    assert tracker.lag(100) == math.inf


async def test_no_replica_configured_means_the_primary_serves_and_it_is_counted(
    database: Database, settings: Settings
) -> None:
    async with Replicas(database, settings) as reads:
        async with reads.connection() as con:
            assert await con.fetchval("SELECT pg_is_in_recovery()") is False
        assert reads.fallbacks() == {"not_configured": 1, "unavailable": 0, "lag": 0}
        assert reads.stats() is None
        assert reads.word() is None
    assert database.stats().acquire_seconds.total > 0  # the primary lent it
