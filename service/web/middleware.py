"""One pure ASGI layer for every HTTP request: its metrics and its disconnect watch.

One layer rather than two: each ASGI layer costs a coroutine and a wrapped `send` per
request, and both jobs need the same wrapped `send` (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .disconnect import SCOPE_KEY, WATCH_AFTER, DisconnectWatch, Sweeper
from .health import HEALTH_ANSWER, HEALTH_PATH, READY_PATH, Prerendered, readiness
from .metrics import Metrics

CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer
UNMATCHED = "unmatched"  # the route label of a path no route knows: no raw paths as labels

log = logging.getLogger("service.app")


SERVER_ERROR = JSONResponse({"error": "internal server error"}, status_code=500)


def log_unhandled(method: str, route: str, exc: BaseException) -> None:
    """The one line, with its traceback, for an error no handler answered (a 500)."""
    log.error("http.unhandled_error method=%s route=%s", method, route, exc_info=exc)


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (`/items/{id:int}`), set in the scope by the router."""
    return getattr(scope.get("route"), "path", None)


class RequestMiddleware:
    """Counts and times each HTTP request by route template; cancels it if its client leaves.

    The watch (disconnect.py) cancels a handler holding a database connection when
    the client disconnects before the response starts; the request then counts as 499.

    An exception no handler answered becomes a 500 here, its traceback logged: past this
    layer, Starlette would answer and re-raise, and uvicorn would then close the HTTP
    connection, leaving any request the client already sent on it without an answer.

    Probes (`GET /api/v1/health`, `GET /api/v1/ready`) are answered here, without the router:
    a readiness probe waits for the database's answer, and each frame between here and the
    route is suspended and resumed with it (the exception layer, the router, the route, the
    request): half of a probe's cost (docs/performance.md). The routes stay registered, so
    the router still answers anything else on those paths (HEAD, a trailing slash, 405).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, watch_after: float = WATCH_AFTER) -> None:
        self.app = app
        self.metrics = metrics
        self.sweeper = Sweeper(watch_after)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if (path == READY_PATH or path == HEALTH_PATH) and scope["method"] == "GET":
            await self._probe(path, scope, receive, send)
            return
        start = time.perf_counter()
        handler = asyncio.current_task()
        assert handler is not None
        watch = scope[SCOPE_KEY] = DisconnectWatch(self.sweeper, receive, handler)
        status = 500  # an exception before the response started becomes a 500 upstream

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                watch.started = True
            await send(message)

        try:
            await self.app(scope, watch.receive, send_status)
        except asyncio.CancelledError:
            if not watch.fired or handler.uncancel() > 0:
                raise
            # Our own cancellation: the client is gone, there is nobody to answer.
        except Exception as exc:
            if watch.started:
                raise  # a response half sent: only closing the connection ends it
            log_unhandled(scope["method"], route_template(scope) or UNMATCHED, exc)
            await SERVER_ERROR(scope, watch.receive, send_status)
        finally:
            # Drop the watch from the scope: it holds the server's receive, whose cycle holds
            # the scope; left there, every request would leave a cycle for the collector.
            del scope[SCOPE_KEY]
            watch.stop()
            if watch.fired:
                status = CLIENT_CLOSED
            route = route_template(scope) or UNMATCHED
            self.metrics.observe_request(
                route, scope["method"], status, time.perf_counter() - start
            )

    async def _probe(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        response: Response
        try:
            if path == HEALTH_PATH:
                response = Prerendered(HEALTH_ANSWER)
            else:
                response = await readiness(scope, self.metrics)
        except Exception as exc:
            log_unhandled("GET", path, exc)
            response = SERVER_ERROR
        await response(scope, receive, send)
        elapsed = time.perf_counter() - start
        self.metrics.observe_request(path, "GET", response.status_code, elapsed)
