"""Cancel a handler whose client has gone while it holds a database connection.

Starlette does not cancel a request handler when its client disconnects: a query runs on to
its end for nobody, holding a pool connection. This pure ASGI middleware gives each HTTP
request a `Watch` (in `scope["service.disconnect"]`); the connection helper starts it when
it acquires, so requests that never touch the database pay nothing. Once started, a task
reads the request's `receive` channel; an `http.disconnect` before the response has
started cancels the handler with CLIENT_DISCONNECTED, the helper has the query cancelled on
the server, and no response is sent. Messages the watch reads (a request body not yet
consumed) are handed on to the app's own `receive` calls, so handlers that read the body,
streaming responses and background tasks keep working.
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db import CLIENT_DISCONNECTED

SCOPE_KEY = "service.disconnect"
_DISCONNECT: Message = {"type": "http.disconnect"}


class Watch:
    """One request's disconnect watch; see the module docstring."""

    __slots__ = ("_receive", "_handler", "_task", "_messages", "_waiter", "_gone", "started")

    def __init__(self, receive: Receive, handler: asyncio.Task[object]) -> None:
        self._receive = receive
        self._handler = handler
        self._task: asyncio.Task[None] | None = None
        self._messages: deque[Message] = deque()  # read by the watch, not yet by the app
        self._waiter: asyncio.Future[None] | None = None  # the app waiting for a message
        self._gone = False  # the client disconnected (or the response completed)
        self.started = False  # the response has started: too late to cancel

    def start(self) -> None:
        """Begin watching (idempotent); called by the helper on acquire."""
        if self._task is None and not self._gone:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def fired(self) -> bool:
        """The watch cancelled the handler."""
        return self._gone and not self.started

    async def receive(self) -> Message:
        """The app's `receive`: what the watch read first, else the channel itself."""
        if self._messages:
            return self._messages.popleft()
        if self._task is None:
            return await self._receive()
        while not self._messages and not self._gone:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._messages.popleft() if self._messages else _DISCONNECT

    async def _watch(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self._gone = True
                    if not self.started:
                        self._handler.cancel(CLIENT_DISCONNECTED)
                    return
                self._messages.append(message)
                self._wake()
        finally:
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class CancelOnDisconnect:
    """Pure ASGI middleware: a `Watch` per HTTP request; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = asyncio.current_task()
        assert handler is not None
        watch = Watch(receive, handler)
        scope[SCOPE_KEY] = watch

        async def send_and_mark(message: Message) -> None:
            if message["type"] == "http.response.start":
                watch.started = True
            await send(message)

        try:
            await self.app(scope, watch.receive, send_and_mark)
        except asyncio.CancelledError:
            if watch.fired and handler.uncancel() == 0:
                return  # our own cancellation: the client is gone, nothing to answer
            raise
        finally:
            watch.stop()
