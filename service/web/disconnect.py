"""Cancel a handler whose client has gone while it holds a database connection.

Starlette does not cancel a request handler when its client disconnects: a query runs on to
its end for nobody, holding a pool connection. The request middleware (middleware.py) gives
each HTTP request a `DisconnectWatch` (in `scope["service.disconnect"]`); the connection helper
tells it when the handler holds a connection and when it lets go. A handler that has held one
across two sweeps (WATCH_AFTER apart) gets a task that reads its request's `receive` channel;
an `http.disconnect` before the response has started cancels the handler with
CLIENT_DISCONNECTED, the connection helper has the query cancelled on the server, and no response is
sent. Fast requests (most) never get that task: the cost per request is a dict entry and the
wrapped `send`. Messages the watch reads (a request body not yet consumed) are handed on to
the app's own `receive` calls, so handlers that read the body, streaming responses and
background tasks keep working.
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.types import Message, Receive

from ..db.connection import CLIENT_DISCONNECTED

SCOPE_KEY = "service.disconnect"
# Seconds between sweeps; a handler still holding a connection at two sweeps in a row is
# watched, so a disconnect cancels it within about 2 x WATCH_AFTER.
WATCH_AFTER = 0.2
_DISCONNECT: Message = {"type": "http.disconnect"}


class DisconnectWatch:
    """One request's disconnect watch; see the module docstring."""

    __slots__ = (
        "_sweeper",
        "_receive",
        "_handler",
        "_task",
        "_messages",
        "_waiter",
        "_gone",
        "_reading",
        "started",
    )

    def __init__(self, sweeper: Sweeper, receive: Receive, handler: asyncio.Task[object]) -> None:
        self._sweeper = sweeper
        self._receive = receive
        self._handler = handler
        self._task: asyncio.Task[None] | None = None
        self._messages: deque[Message] = deque()  # read by the watch, not yet by the app
        self._waiter: asyncio.Future[None] | None = None  # the app waiting for a message
        self._gone = False  # the client disconnected (or the response completed)
        self._reading = False  # the app itself waits on the channel (a streamed body)
        self.started = False  # the response has started: too late to cancel

    def hold(self) -> None:
        """The handler holds a connection (told by the connection helper on acquire)."""
        self._sweeper.hold(self)

    def let_go(self) -> None:
        self._sweeper.let_go(self)

    def start(self) -> None:
        """Begin reading the channel (idempotent); called by the sweeper."""
        # Never two readers of one channel: if the app is reading (a streamed body), the
        # next sweep tries again.
        if self._task is None and not self._gone and not self.started and not self._reading:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        """At the request's end: stop reading the channel."""
        self._sweeper.let_go(self)
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
            self._reading = True
            try:
                return await self._receive()
            finally:
                self._reading = False
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


class Sweeper:
    """Starts the watches of handlers that hold a connection across two sweeps.

    A timer callback, not a task, and only while some handler holds a connection.
    """

    def __init__(self, interval: float = WATCH_AFTER) -> None:
        self.interval = interval
        self._held: dict[DisconnectWatch, None] = {}  # insertion-ordered set
        self._seen: set[DisconnectWatch] = set()  # held at the last sweep
        self._timer: asyncio.TimerHandle | None = None

    def hold(self, watch: DisconnectWatch) -> None:
        self._held[watch] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)

    def let_go(self, watch: DisconnectWatch) -> None:
        self._held.pop(watch, None)

    def _sweep(self) -> None:
        for watch in self._seen:
            if watch in self._held:
                watch.start()
        self._seen = set(self._held)
        if self._held:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)
        else:
            self._timer = None
