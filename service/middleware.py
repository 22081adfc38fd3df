"""One pure ASGI layer for every HTTP request: its metrics and its disconnect watch.

One layer rather than two: each ASGI layer costs a coroutine and a wrapped `send` per
request, and both jobs need the same wrapped `send` (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .disconnect import SCOPE_KEY, WATCH_AFTER, Sweeper, Watch
from .metrics import Metrics

CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer
UNMATCHED = "unmatched"  # the route label of a path no route knows: no raw paths as labels


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (`/items/{id:int}`), set in the scope by the router."""
    return getattr(scope.get("route"), "path", None)


class RequestMiddleware:
    """Counts and times each HTTP request by route template; cancels it if its client leaves.

    The watch (service/disconnect.py) cancels a handler holding a database connection when
    the client disconnects before the response starts; the request then counts as 499.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, watch_after: float = WATCH_AFTER) -> None:
        self.app = app
        self.metrics = metrics
        self.sweeper = Sweeper(watch_after)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        handler = asyncio.current_task()
        assert handler is not None
        watch = scope[SCOPE_KEY] = Watch(self.sweeper, receive, handler)
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
