"""uvicorn's httptools protocol with a bound on each request head and a deadline for it,
and its keep-alive timer cancelled however a connection ends.

uvicorn bounds neither with httptools: a 64 MiB header was buffered whole (the process
grew by as much), and a client that sent half a request line kept its socket for as long
as it liked, since any byte cancels the keep-alive timer and nothing else is armed. h11
has a size bound (h11_max_incomplete_event_size) but no deadline either, and is slower.
Bodies are not bounded here but where they are read: read_json stops at
HTTP_MAX_BODY_BYTES (service/web/bodies.py).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # request line + headers; h11's default in uvicorn is 16 KiB
HEAD_TIMEOUT = 10.0  # seconds from a connection (or a request's first byte) to its last header

_TOO_LARGE = b"request head too large"
_TOO_LARGE_RESPONSE = b"".join(
    [
        STATUS_LINE[431],
        b"content-type: text/plain; charset=utf-8\r\n",
        b"content-length: %d\r\n" % len(_TOO_LARGE),
        b"connection: close\r\n\r\n",
        _TOO_LARGE,
    ]
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol; a head over MAX_HEAD_BYTES gets a 431, one slower than
    HEAD_TIMEOUT a closed socket.

    Counted per chunk read: the bound is MAX_HEAD_BYTES plus at most one read. The deadline
    costs a request nothing: no clock is read per request. One timer per connection ticks
    every HEAD_TIMEOUT / 2, and a head still in progress at three ticks in a row, with no
    head completed in between, has lasted at least HEAD_TIMEOUT (at most 1.5 times it):
    the connection is closed. A connection that never sent a byte counts as one in a head;
    one idle between requests does not (HTTP_KEEPALIVE_TIMEOUT is for that).
    """

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout = HEAD_TIMEOUT
    TICKS = 3  # ticks in a row that saw the same head in progress: >= HEAD_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # From a connection's start or a message's end to the next headers.
        self._in_head = True
        self._head_bytes = 0
        self._heads = 0  # heads completed on this connection
        self._refused = False  # answered 431 and closing
        self._seen = (-1, 0)  # at the last tick: (heads then, ticks in a row in a head)
        self._head_timer = self.loop.call_later(self.head_timeout / 2, self._tick)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_timer.cancel()
        super().connection_lost(exc)
        # uvicorn cancels the keep-alive timer only for a clean close (exc is None): after
        # a reset the armed timer held the protocol, its buffers and its last request for
        # HTTP_KEEPALIVE_TIMEOUT. Clients resetting after one request grew the process by
        # about 1 GB in 40 s at 75 s (scripts/http_limits.py; tests/test_http.py).
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    # The callbacks below run for every request: they call the parent's method directly
    # (no super() object) and touch only plain attributes.

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_head = self._in_head
        if in_head:
            self._head_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if in_head and self._in_head and self._head_bytes > self.max_head_bytes:
            self.logger.warning("Request head over %d bytes; answered 431.", self.max_head_bytes)
            self._refused = True
            self.transport.write(_TOO_LARGE_RESPONSE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._in_head = True
        self._head_bytes = 0

    def _tick(self) -> None:
        if self.transport.is_closing():
            return
        responding = self.cycle is not None and not self.cycle.response_complete
        started = self._head_bytes > 0 or self._heads == 0  # bytes of a head, or a new one
        heads, ticks = self._seen
        if self._in_head and started and not responding:
            ticks = ticks + 1 if heads == self._heads else 1
            if ticks >= self.TICKS:
                self.transport.close()
                return
        else:
            ticks = 0
        self._seen = (self._heads, ticks)
        self._head_timer = self.loop.call_later(self.head_timeout / 2, self._tick)
