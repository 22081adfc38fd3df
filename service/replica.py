"""Read replicas: is the replica up, and how far behind the primary is it, in WAL positions."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING

from .states import LAGGING, DbState

if TYPE_CHECKING:
    from .db import Database

log = logging.getLogger("service.db")

# Positions as numbers (bytes of WAL since 0/0), so they compare without a pg_lsn codec.
PRIMARY_LSN_QUERY = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# What a standby has replayed. A replica that is itself a primary (a promoted one, or
# prefer-standby finding no standby) is as current as what it has written.
REPLICA_LSN_QUERY = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn"
)
MAX_SAMPLES = 1000  # primary positions kept while a replica catches up (a few minutes' worth)
MAX_INTERVAL = 1.0  # seconds between two measurements, at most

# Why a read_only=True connection went to the primary (the label of the fallback counter).
NOT_CONFIGURED = "not_configured"
UNAVAILABLE = "unavailable"
LAG = "lag"
FALLBACK_REASONS = (NOT_CONFIGURED, UNAVAILABLE, LAG)


class LagTracker:
    """Seconds since the replica last had replayed everything the primary had written.

    Replay timestamps (`now() - pg_last_xact_replay_timestamp()`) grow on an idle primary
    while the replica is perfectly current; WAL positions do not. The primary's position is
    sampled with the time it was read, and a replica that has replayed up to a sample was
    current as of that sample's time. An idle primary keeps one sample, its time renewed.
    """

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=max_samples)
        self._caught_up_at: float | None = None

    def primary_at(self, when: float, lsn: int) -> None:
        """The primary had written up to `lsn` by `when` (read before the position was asked)."""
        samples = self._samples
        if samples and lsn < samples[-1][1]:
            samples.clear()  # another primary, behind the old one: start over
        if samples and samples[-1][1] == lsn:
            samples[-1] = (when, lsn)
        else:
            samples.append((when, lsn))

    def replica_at(self, lsn: int) -> None:
        """The replica has replayed up to `lsn` (read after the primary's latest sample)."""
        samples = self._samples
        caught_up: float | None = None
        while samples and samples[0][1] <= lsn:
            caught_up = samples.popleft()[0]
        if caught_up is not None and (self._caught_up_at is None or caught_up > self._caught_up_at):
            self._caught_up_at = caught_up

    def lag(self, now: float) -> float:
        """Seconds behind; infinite until the replica has been seen current once."""
        if self._caught_up_at is None:
            return math.inf
        return max(0.0, now - self._caught_up_at)


class ReplicaMonitor:
    """Measures the replica in the background: its readiness word and its lag.

    One tick every `min(1 s, DB_REPLICA_MAX_LAG / 4)`: the primary's WAL position, then the
    replica's check (single-flight, state changes logged once as `db_replica.*`) returning
    its replay position. Requests read the outcome; they never wait for a measurement.
    """

    def __init__(self, primary: Database, replica: Database, max_lag: float) -> None:
        self._primary = primary
        self._replica = replica
        self.max_lag = max_lag
        self.interval = min(MAX_INTERVAL, max_lag / 4)
        self.tracker = LagTracker()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="db-replica")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug: logged, and the lag grows, so reads go to the primary
                log.exception("db_replica.monitor_failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        """One measurement: the primary's position first, then the replica's."""
        when = time.monotonic()
        written = await self._primary.fetch_bounded(PRIMARY_LSN_QUERY)
        if written is not None:  # unknown while the primary is down or read-only
            self.tracker.primary_at(when, int(written))
        if await self._replica.check() == DbState.CONNECTED:
            replayed = self._replica.probe_value
            if replayed is not None:
                self.tracker.replica_at(int(replayed))

    def lag(self) -> float:
        return self.tracker.lag(time.monotonic())

    def word(self) -> str:
        """The replica's word in /api/v1/ready: a DbState word, or `lagging`."""
        state = self._replica.state
        if state == DbState.CONNECTED and self.lag() > self.max_lag:
            return LAGGING
        return state

    def unusable(self) -> str | None:
        """Why a read must go to the primary now, or None: the replica may serve it."""
        if self._replica.state != DbState.CONNECTED or not self._replica.has_pool():
            return UNAVAILABLE
        if self.lag() > self.max_lag:
            return LAG
        return None
