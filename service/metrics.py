"""Prometheus metrics: pool and connection figures read at scrape time, readiness, HTTP.

One registry per app (`create_app` is a factory; tests build many apps). The pool gauges
and connection counters cost nothing per request: a custom collector reads them from the
pool and from `Database`'s plain counts when Prometheus scrapes.

One process, one registry: with WORKERS > 1 each scrape reaches whichever worker accepts
it, so run one worker per container and scale replicas (docs/operations.md says why
multiprocess mode is not used).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db import CONNECTED, Database

UNMATCHED = "unmatched"  # the route label of a path no route knows: no raw paths as labels
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Readiness answers within DB_READY_TIMEOUT (0.8 s by default): resolve below and around it.
READY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 2.5)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The app's registry and its metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.database: Database | None = None  # set by the lifespan
        self.registry.register(PoolCollector(self))
        self.ready_checks = Counter(
            "db_ready_checks",
            "Readiness checks of the database, by outcome (the readiness word).",
            ["outcome"],
            registry=self.registry,
        )
        self.ready_duration = Histogram(
            "db_ready_check_duration_seconds",
            "Time to answer a readiness check, within DB_READY_TIMEOUT.",
            buckets=READY_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by route template and method, until the response ends.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        # labels() takes a lock and builds a key each time; keep the children we made.
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}

    def observe_ready(self, outcome: str, seconds: float) -> None:
        self.ready_checks.labels(outcome).inc()
        self.ready_duration.observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"  # clients choose methods; keep label values bounded
        key = (route, method, status)
        requests = self._requests.get(key)
        if requests is None:
            requests = self._requests[key] = self.http_requests.labels(route, method, str(status))
        requests.inc()
        duration = self._durations.get(key[:2])
        if duration is None:
            duration = self._durations[key[:2]] = self.http_duration.labels(route, method)
        duration.observe(seconds)

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics: the Prometheus text format."""
        return Response(
            generate_latest(self.registry),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )


class PoolCollector(Collector):
    """Pool gauges and connection counters, read from the live pool at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        db = self.metrics.database
        pool = db.pool if db is not None else None
        size = pool.get_size() if pool is not None else 0
        idle = pool.get_idle_size() if pool is not None else 0
        maximum = db.settings.pool_max_size if db is not None else 0
        yield GaugeMetricFamily("db_pool_size", "Open connections in the pool.", size)
        yield GaugeMetricFamily("db_pool_idle", "Open connections waiting in the pool.", idle)
        yield GaugeMetricFamily(
            "db_pool_in_use", "Connections lent to requests or checks.", size - idle
        )
        yield GaugeMetricFamily("db_pool_max", "DB_POOL_MAX_SIZE: the pool's ceiling.", maximum)
        yield GaugeMetricFamily(
            "db_up",
            "1 when the last readiness check found the database connected.",
            1 if db is not None and db.state == CONNECTED else 0,
        )
        opened = db.connections_opened if db is not None else 0
        lost = db.connections_lost if db is not None else 0
        closed = db.connections_closed if db is not None else 0
        yield CounterMetricFamily("db_connections_opened", "Connections the pool opened.", opened)
        yield CounterMetricFamily(
            "db_connections_lost",
            "Connections closed by the server or the network (restart, crash, kill).",
            lost,
        )
        yield CounterMetricFamily(
            "db_connections_closed",
            "Connections the service closed (lifetime, idle, timeout, expiry, shutdown).",
            closed,
        )


class HTTPMetrics:
    """Pure ASGI middleware: counts and times each HTTP request by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the response started becomes a 500 upstream

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router puts the matched route into the scope; its path is the template.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.observe_request(
                route, scope["method"], status, time.perf_counter() - start
            )
