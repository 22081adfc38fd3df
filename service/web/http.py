"""uvicorn's httptools protocol with a bound on each request head and a deadline for it.

uvicorn bounds neither with httptools: a 64 MiB header was buffered whole (the process
grew by as much), and a client that sent half a request line kept its socket for as long
as it liked, since any byte cancels the keep-alive timer and nothing else is armed. h11
has a size bound (h11_max_incomplete_event_size) but no deadline either, and is slower.
Bodies are not bounded here: no route reads one (docs/operations.md, "What the proxy
in front must bound").
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

    Counted per chunk read: the bound is MAX_HEAD_BYTES plus at most one read. The
    deadline is one timer per connection, not one per request: requests only note when
    their head began, and the timer compares.
    """

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout = HEAD_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Counting: from a connection's start or a message's end to the next headers.
        self._in_head = True
        self._head_bytes = 0
        # The deadline: from the connection's start (a client that never sends a byte is
        # closed too) or a request's first byte; None while no head is in progress.
        self._head_started: float | None = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_timeout, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_timer.cancel()
        super().connection_lost(exc)

    # The callbacks below run for every request: they call the parent's method directly
    # (no super() object), and the head's start is noted here rather than in a fourth
    # override (on_message_begin).

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        in_head = self._in_head
        if in_head:
            if self._head_started is None:  # the first byte of the next request's head
                self._head_started = self.loop.time()
            self._head_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if in_head and self._in_head and self._head_bytes > self.max_head_bytes:
            self.logger.warning("Request head over %d bytes; answered 431.", self.max_head_bytes)
            self.transport.write(_TOO_LARGE_RESPONSE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = None
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._in_head = True
        self._head_bytes = 0

    def _check_head(self) -> None:
        if self.transport.is_closing():
            return
        delay = self.head_timeout
        responding = self.cycle is not None and not self.cycle.response_complete
        if self._head_started is not None and not responding:
            waited = self.loop.time() - self._head_started
            if waited >= self.head_timeout:
                self.transport.close()
                return
            delay -= waited
        self._head_timer = self.loop.call_later(delay, self._check_head)
