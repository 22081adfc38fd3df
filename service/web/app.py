"""The Starlette application factory; the lifespan owns the database."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from sys import _getframe
from types import FrameType
from typing import TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..db import Database, DatabaseUnavailable, QueryTimeout, Replicas
from ..db.pool import Holder, Proxy
from ..migrations.startup import startup_hook
from ..settings import Settings
from . import health
from .disconnect import SCOPE_KEY
from .metrics import Metrics
from .middleware import SERVER_ERROR, UNMATCHED, RequestMiddleware, route_template
from .tracing import RouteName, Tracing

log = logging.getLogger("service.app")


class State(TypedDict):
    db: Database  # the primary's pool
    reads: Replicas  # read_only=True connections: the replica's, else the primary's


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatabaseUnavailable)
    return JSONResponse(
        {"error": "database unavailable", "db": exc.reason},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _query_timeout(request: Request, exc: Exception) -> JSONResponse:
    # Once per timeout, with the route template; never the query's parameters.
    route = route_template(request.scope) or request.url.path
    log.warning("db.query_timeout route=%s method=%s", route, request.method)
    return JSONResponse(
        {"error": "database timeout"}, status_code=503, headers={"Retry-After": "1"}
    )


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # An error in a middleware outside ours; the traceback goes to the log, never the client.
    return SERVER_ERROR


def create_app(settings: Settings | None = None, *, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the app; settings come from the environment unless given.

    `routes`: the features' Starlette routes and mounts, served beside health, readiness
    and metrics (which win on a clash of paths: they come first). Building the app and
    running its lifespan change nothing process-wide (the serve command tunes the process).
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
                Database(settings, on_connected=[startup_hook(settings)]) as db,
                Replicas(db, settings) as reads,
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
            Route("/api/v1/health", health.health, methods=["GET"]),
            Route("/api/v1/ready", health.ready, methods=["GET"]),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
            *routes,
        ],
        middleware=middleware,
        exception_handlers={
            HTTPException: _http_error,
            QueryTimeout: _query_timeout,
            DatabaseUnavailable: _db_unavailable,
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


def db_connection(
    request: Request, *, read_only: bool = False
) -> AbstractAsyncContextManager[Proxy]:
    """The request-scoped connection helper (FastAPI's `Depends(get_db)` session, here).

    `async with db_connection(request) as con:` acquires within DB_ACQUIRE_TIMEOUT and
    always releases, also when the handler raises; no connection means a 503, and so does a
    write the server refuses as read-only (`"db": "read_only"`) or a connection that dies
    under the handler (`"db": "disconnected"`). `read_only=True`: a read replica's
    connection when one is configured, up and current, else the primary's.
    """
    watch = request.scope.get(SCOPE_KEY)  # a client that leaves cancels the query
    db: Database = request.state.db
    holder = None
    if db.warns_on_long_holds:  # DB_HOLD_WARNING_MS: only then is the caller looked up
        holder = _holder(request, _getframe(1))
    if read_only:
        reads: Replicas = request.state.reads
        return reads.connection(watch=watch, holder=holder)
    return db.connection(watch=watch, holder=holder)


def _holder(request: Request, caller: FrameType) -> Holder:
    """The route template and the handler's line calling db_connection (file:line, the
    path relative to the working directory when under it)."""
    path = caller.f_code.co_filename
    here = os.getcwd() + os.sep
    site = f"{path.removeprefix(here)}:{caller.f_lineno}"
    return Holder(route_template(request.scope) or UNMATCHED, site)
