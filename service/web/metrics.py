"""Prometheus metrics: pool and connection figures read at scrape time, readiness, HTTP.

One registry per app (`create_app` is a factory; tests build many apps). The pool gauges
and connection counters cost nothing per request: a custom collector reads them from the
pool and from `Database`'s plain counts when Prometheus scrapes.

One process, one registry: with WORKERS > 1 each scrape reaches whichever worker accepts
it, so run one worker per container and scale replicas (docs/operations.md says why
multiprocess mode is not used).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response

from ..db import Database, DbState, PoolStats, Replicas
from ..histogram import Histogram

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Readiness answers within DB_READY_TIMEOUT (0.8 s by default): resolve below and around it.
READY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's registry; the hot path only bumps plain numbers, read at scrape time.

    Everything runs on the event loop's thread, so no locks: recording a request costs a
    dict lookup, a bisect and three additions (prometheus_client's own Counter and
    Histogram take a lock per increment, several microseconds per request together).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.database: Database | None = None  # set by the lifespan
        self.reads: Replicas | None = None
        self.ready_checks: dict[str, int] = {}
        self.ready_duration = Histogram(READY_BUCKETS)
        self.http: dict[tuple[str, str, int], Histogram] = {}
        self.registry.register(PoolCollector(self))
        self.registry.register(RequestCollector(self))

    def observe_ready(self, outcome: str, seconds: float) -> None:
        self.ready_checks[outcome] = self.ready_checks.get(outcome, 0) + 1
        self.ready_duration.observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"  # clients choose methods; keep label values bounded
        key = (route, method, status)
        histogram = self.http.get(key)
        if histogram is None:
            histogram = self.http[key] = Histogram(HTTP_BUCKETS)
        histogram.observe(seconds)

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics: the Prometheus text format."""
        return Response(
            generate_latest(self.registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )


def _by_label(name: str, documentation: str, label: str, counts: dict[str, int]) -> Metric:
    """A counter family with one label, a sample per value."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> Metric:
    """A histogram family without labels, from the plain numbers."""
    return HistogramMetricFamily(
        name, documentation, buckets=_buckets(histogram), sum_value=histogram.total
    )


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    cumulative: list[float] = list(accumulate(histogram.counts))
    # prometheus_client's helper is untyped; it spells bounds as the exposition format wants.
    names: list[str] = [
        floatToGoString(b)  # type: ignore[no-untyped-call]
        for b in histogram.bounds
    ]
    return [*zip(names, cumulative, strict=False), ("+Inf", cumulative[-1])]


class RequestCollector(Collector):
    """HTTP and readiness families, built from the plain numbers at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _by_label(
            "db_ready_checks",
            "Readiness checks of the database, by outcome (the readiness word).",
            "outcome",
            m.ready_checks,
        )
        yield _histogram(
            "db_ready_check_duration_seconds",
            "Time to answer a readiness check, within DB_READY_TIMEOUT.",
            m.ready_duration,
        )
        requests = CounterMetricFamily(
            "http_requests",
            "HTTP requests by route template, method and status.",
            labels=["route", "method", "status"],
        )
        by_route: dict[tuple[str, str], Histogram] = {}
        for (route, method, status), histogram in sorted(m.http.items()):
            requests.add_metric([route, method, str(status)], sum(histogram.counts))
            by_route.setdefault((route, method), Histogram(HTTP_BUCKETS)).merge(histogram)
        yield requests
        duration = HistogramMetricFamily(
            "http_request_duration_seconds",
            "HTTP request latency by route template and method, until the response ends.",
            labels=["route", "method"],
        )
        for (route, method), histogram in by_route.items():
            duration.add_metric([route, method], _buckets(histogram), histogram.total)
        yield duration


class PoolCollector(Collector):
    """Each pool's gauges and counters, read from its own snapshot at scrape time.

    The primary's families are `db_*`; a replica's are the same families named
    `db_replica_*`, counting only the replica's own connections.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        db = self.metrics.database
        stats = db.stats() if db is not None else None
        yield GaugeMetricFamily(
            "db_up",
            "1 when the last readiness check found the database connected.",
            1 if stats is not None and stats.state == DbState.CONNECTED else 0,
        )
        yield from pool_families("db", "", stats)
        if stats is not None:
            yield CounterMetricFamily(
                "db_writes_refused",
                "Handler queries refused as read-only (SQLSTATE 25006): connection closed, 503.",
                stats.writes_refused,
            )
            yield _by_label(
                "db_transactions",
                "run_in_transaction outcomes: committed, rolled_back, retries_exhausted, "
                "outcome_unknown.",
                "outcome",
                stats.transactions,
            )
            yield _by_label(
                "db_transaction_retries",
                "Transactions run again after a serialization failure (40001) or a deadlock "
                "(40P01).",
                "sqlstate",
                stats.transaction_retries,
            )
        reads = self.metrics.reads
        if reads is None:
            return
        yield _by_label(
            "db_replica_fallbacks",
            "read_only=True connections the primary served: not_configured, unavailable, lag.",
            "reason",
            reads.fallbacks(),
        )
        replica = reads.stats()
        if replica is None:
            return
        yield GaugeMetricFamily(
            "db_replica_up",
            "1 when the replica is connected and within DB_REPLICA_MAX_LAG.",
            1 if replica.word == DbState.CONNECTED else 0,
        )
        yield GaugeMetricFamily(
            "db_replica_lag_seconds",
            "Seconds since the replica last had replayed all the primary had written.",
            replica.lag_seconds,
        )
        yield from pool_families("db_replica", "The replica's: ", replica.pool)


def pool_families(prefix: str, whose: str, stats: PoolStats | None) -> Iterator[Metric]:
    """One pool's families, `prefix`_pool_size and so on; zeros before the pool exists."""
    size = stats.size if stats is not None else 0
    idle = stats.idle if stats is not None else 0
    yield GaugeMetricFamily(f"{prefix}_pool_size", f"{whose}Open connections in the pool.", size)
    yield GaugeMetricFamily(
        f"{prefix}_pool_idle", f"{whose}Open connections waiting in the pool.", idle
    )
    yield GaugeMetricFamily(
        f"{prefix}_pool_in_use", f"{whose}Connections lent to requests or checks.", size - idle
    )
    yield GaugeMetricFamily(
        f"{prefix}_pool_max",
        f"{whose}DB_POOL_MAX_SIZE: the pool's ceiling.",
        stats.max_size if stats is not None else 0,
    )
    yield CounterMetricFamily(
        f"{prefix}_connections_opened",
        f"{whose}Connections the pool opened.",
        stats.opened if stats is not None else 0,
    )
    yield CounterMetricFamily(
        f"{prefix}_connections_lost",
        f"{whose}Connections closed by the server or the network (restart, crash, kill).",
        stats.lost if stats is not None else 0,
    )
    yield CounterMetricFamily(
        f"{prefix}_connections_closed",
        f"{whose}Connections the service closed (lifetime, idle, timeout, expiry, shutdown).",
        stats.closed if stats is not None else 0,
    )
    if stats is None:
        return
    yield GaugeMetricFamily(
        f"{prefix}_pool_waiting",
        f"{whose}Callers waiting for a pool connection now.",
        stats.waiting,
    )
    yield _histogram(
        f"{prefix}_pool_acquire_seconds",
        f"{whose}Time to get a connection, timeouts included.",
        stats.acquire_seconds,
    )
    yield CounterMetricFamily(
        f"{prefix}_pool_acquire_timeouts",
        f"{whose}Callers that got no connection within DB_ACQUIRE_TIMEOUT (answered 503).",
        stats.acquire_timeouts,
    )
    yield _histogram(
        f"{prefix}_pool_held_seconds",
        f"{whose}Time a caller held a connection, from acquire to release.",
        stats.held_seconds,
    )
    yield _by_label(
        f"{prefix}_queries_cancelled",
        f"{whose}Queries cancelled on the server: timeout (DB_COMMAND_TIMEOUT) or disconnect.",
        "reason",
        stats.cancelled,
    )
    yield CounterMetricFamily(
        f"{prefix}_connections_broken_in_use",
        f"{whose}Lent connections the server or the network ended under a handler (503).",
        stats.broken_in_use,
    )
    yield CounterMetricFamily(
        f"{prefix}_connections_stale_discarded",
        f"{whose}Idle connections the server had already ended, closed instead of lent.",
        stats.stale_discarded,
    )
