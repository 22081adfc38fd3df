"""The Starlette application factory; the lifespan owns the database."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..db import Database, Replicas
from ..db.opening import OnConnect
from ..migrations.startup import startup_hook
from ..settings import Settings
from . import errors, health
from .metrics import Metrics
from .middleware import SERVER_ERROR, RequestMiddleware
from .tracing import RouteName, Tracing

log = logging.getLogger("service.app")


class State(TypedDict):
    db: Database  # the primary's pool
    reads: Replicas  # read_only=True connections: the replica's, else the primary's


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # An error in a middleware outside ours; the traceback goes to the log, never the client.
    return SERVER_ERROR


def create_app(
    settings: Settings | None = None,
    *,
    routes: Sequence[BaseRoute] = (),
    on_connect: OnConnect | None = None,
) -> Starlette:
    """Build the app; settings come from the environment unless given.

    `routes`: the features' Starlette routes and mounts, served beside health, readiness
    and metrics (which win on a clash of paths: they come first). `on_connect(con)`: run
    once per new physical connection (primary and replica), after the foundation's own
    set-up (JSON codecs, UTC), outside any transaction: codecs, prepared statements, `SET`s
    meant for the connection's life. A hook that raises closes that connection, is logged
    once, and readiness answers `error` while no connection can be set up. Building the
    app and running its lifespan change nothing process-wide.
    """
    settings = settings or Settings.from_env()
    metrics = Metrics()
    tracing = Tracing(settings) if settings.otel_endpoint else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        if settings.workers > 1:
            log.warning(
                "metrics.per_worker workers=%d: /metrics shows one worker", settings.workers
            )
        if tracing is not None:
            tracing.start()
        try:
            async with (
                Database(
                    settings, on_connected=[startup_hook(settings)], on_connect=on_connect
                ) as db,
                Replicas(db, settings, on_connect=on_connect) as reads,
            ):
                metrics.database, metrics.reads = db, reads
                yield {"db": db, "reads": reads}
        finally:
            if tracing is not None:
                tracing.stop()

    middleware = [Middleware(RequestMiddleware, metrics=metrics)]
    if tracing is not None:
        middleware[:0] = [Middleware(tracing.middleware, **tracing.options), Middleware(RouteName)]

    app = Starlette(
        routes=[
            Route(health.HEALTH_PATH, health.health, methods=["GET"]),
            Route(health.READY_PATH, health.ready, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            *routes,
        ],
        middleware=middleware,
        exception_handlers={
            HTTPException: _http_error,
            **errors.HANDLERS,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    # Starlette answers /api/v1/ready/ with a 307 to the same path on whatever host the
    # request's Host header names: an open redirect. A trailing slash is an unknown path.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.metrics = metrics
    return app
