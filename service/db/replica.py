"""Read replicas: where `read_only=True` connections come from, and why.

`Replicas` sits above two pools (the primary's Database and, with DATABASE_REPLICA_URL,
the replica's): it lends the replica's connection while the replica is up and within
DB_REPLICA_MAX_LAG, else the primary's, counting each fallback by its reason. The lag is
measured in WAL positions, in the background, by `LagMonitor`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from ..settings import Settings
from .connection import DatabaseUnavailable
from .opening import OnConnect
from .pool import Database, Holder, HoldWatch, PooledConnection, PoolStats, Proxy
from .states import LAGGING, DbState

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

    def __len__(self) -> int:
        """The primary's positions kept (at most `max_samples`)."""
        return len(self._samples)

    def lag(self, now: float) -> float:
        """Seconds behind; infinite until the replica has been seen current once."""
        if self._caught_up_at is None:
            return math.inf
        return max(0.0, now - self._caught_up_at)


class LagMonitor:
    """Measures the replica in the background: its readiness word and its lag.

    One tick every `min(1 s, DB_REPLICA_MAX_LAG / 4)`: the primary's WAL position, then the
    replica's check (single-flight, state changes logged once as `db_replica.*`) and its
    replay position. Requests read the outcome; they never wait for a measurement.
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
        written = await self._primary.fetch_within_deadline(PRIMARY_LSN_QUERY)
        if written is not None:  # unknown while the primary is down or read-only
            self.tracker.primary_at(when, int(written))
        if await self._replica.check() == DbState.CONNECTED:
            replayed = await self._replica.fetch_within_deadline(REPLICA_LSN_QUERY)
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
        if not self._replica.connected:
            return UNAVAILABLE
        if self.lag() > self.max_lag:
            return LAG
        return None


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """The replica's part of a snapshot: its word, its lag, its own pool's figures."""

    word: str  # its readiness word: a DbState word or "lagging"
    lag_seconds: float  # since it last had all the primary had written; inf until measured
    pool: PoolStats


class Replicas:
    """Lends `read_only=True` connections: the replica's when it can serve them, else the
    primary's, the fallback counted by reason (`not_configured`, `unavailable`, `lag`).

    Owns the replica's Database and its LagMonitor; the primary's Database is the caller's.
    """

    def __init__(
        self, primary: Database, settings: Settings, *, on_connect: OnConnect | None = None
    ) -> None:
        self.primary = primary
        self.replica: Database | None = None
        self._monitor: LagMonitor | None = None
        self._fallbacks = dict.fromkeys(FALLBACK_REASONS, 0)
        if settings.replica_url is not None:
            self.replica = Database(
                settings.for_replica(),
                name="db_replica",
                requires_writes=False,
                on_connect=on_connect,
            )
            self._monitor = LagMonitor(primary, self.replica, settings.replica_max_lag)

    async def __aenter__(self) -> Replicas:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        if self.replica is not None and self._monitor is not None:
            self.replica.start()
            self._monitor.start()

    async def close(self) -> None:
        if self._monitor is not None:
            await self._monitor.close()
        if self.replica is not None:
            await self.replica.close()

    def connection(
        self,
        timeout: float | None = None,
        *,
        watch: HoldWatch | None = None,
        holder: Holder | None = None,
    ) -> ReadConnection:
        """A connection for reads that tolerate DB_REPLICA_MAX_LAG of staleness."""
        return ReadConnection(self, timeout, watch, holder)

    def word(self) -> str | None:
        """The replica's readiness word (`lagging` too); None when none is configured."""
        return None if self._monitor is None else self._monitor.word()

    def fallbacks(self) -> dict[str, int]:
        """Reads the primary served, by reason."""
        return dict(self._fallbacks)

    def stats(self) -> ReplicaStats | None:
        if self.replica is None or self._monitor is None:
            return None
        return ReplicaStats(self._monitor.word(), self._monitor.lag(), self.replica.stats())

    def _choose(self) -> Database | str:
        """The replica's Database, or why the primary must serve."""
        if self.replica is None or self._monitor is None:
            return NOT_CONFIGURED
        return self._monitor.unusable() or self.replica

    def _fell_back(self, reason: str) -> None:
        self._fallbacks[reason] += 1


class ReadConnection:
    """`async with replicas.connection() as con`: the replica's connection, or the primary's
    when the replica cannot serve (and when it went down since the last measurement)."""

    __slots__ = ("_replicas", "_timeout", "_watch", "_holder", "_lease")

    def __init__(
        self,
        replicas: Replicas,
        timeout: float | None,
        watch: HoldWatch | None,
        holder: Holder | None,
    ) -> None:
        self._replicas = replicas
        self._timeout = timeout
        self._watch = watch
        self._holder = holder
        self._lease: PooledConnection | None = None

    async def __aenter__(self) -> Proxy:
        replicas = self._replicas
        chosen = replicas._choose()
        if isinstance(chosen, Database):
            lease = chosen.connection(self._timeout, watch=self._watch, holder=self._holder)
            try:
                con = await lease.__aenter__()
            except DatabaseUnavailable:
                chosen = UNAVAILABLE  # went down since the last measurement
            else:
                self._lease = lease
                return con
        replicas._fell_back(chosen)
        lease = replicas.primary.connection(self._timeout, watch=self._watch, holder=self._holder)
        con = await lease.__aenter__()
        self._lease = lease
        return con

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.__aexit__(exc_type, exc, tb)
