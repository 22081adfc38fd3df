"""The HTTP protocol `serve` runs: request heads bounded in size and in time."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

from service import create_app
from service.testing.polling import wait_until_async
from service.web.http import MAX_HEAD_BYTES, BoundedHttpToolsProtocol
from tests.support.apps import test_settings
from tests.support.cluster import free_port

HEALTH = b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\n\r\n"


class QuickHeads(BoundedHttpToolsProtocol):
    head_timeout = 0.2  # the shipped 10 s, shortened so the suite does not wait for it


@asynccontextmanager
async def serving(protocol: type[BoundedHttpToolsProtocol]) -> AsyncIterator[int]:
    """A real uvicorn server on this loop; liveness needs no database."""
    settings = test_settings("postgresql://app@127.0.0.1:1/orders")
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        http=protocol,
        lifespan="off",
        log_config=None,
        timeout_keep_alive=settings.http_keepalive_timeout,  # as serve sets it (75 s)
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, *writes: bytes) -> bytes:
    """Send `writes`, then read until the server closes (at most 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def with_header(size: int) -> bytes:
    return b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * size + b"\r\n\r\n"


async def test_a_head_over_the_bound_gets_431_and_the_server_carries_on() -> None:
    async with serving(BoundedHttpToolsProtocol) as port:
        big = with_header(4 * MAX_HEAD_BYTES)
        chunks = [big[i : i + 8192] for i in range(0, len(big), 8192)]
        try:
            answer = await exchange(port, *chunks)
        except ConnectionResetError:  # the server closed while we were still writing
            answer = b"HTTP/1.1 431 (reset before read)"
        assert answer.startswith(b"HTTP/1.1 431 ")
        ok = await exchange(port, HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert ok.startswith(b"HTTP/1.1 200 ")


async def test_a_head_below_the_bound_is_served() -> None:
    async with serving(BoundedHttpToolsProtocol) as port:
        head = with_header(MAX_HEAD_BYTES - 1024).replace(
            b"Host: test\r\n", b"Host: test\r\nConnection: close\r\n"
        )
        assert (await exchange(port, head)).startswith(b"HTTP/1.1 200 ")


async def test_a_body_read_with_its_head_is_not_counted_as_head() -> None:
    body = b"x" * (2 * MAX_HEAD_BYTES)
    post = b"POST /api/v1/health HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with serving(BoundedHttpToolsProtocol) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(post + body)  # one write: the server reads head and body together
            async with asyncio.timeout(10):
                assert (await read_response(reader)).startswith(b"HTTP/1.1 405 ")
                # The same connection goes on: the body was not taken for a head.
                writer.write(HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
        finally:
            writer.close()


async def test_half_a_request_line_is_closed_at_the_head_deadline() -> None:
    async with serving(QuickHeads) as port:
        assert await exchange(port, b"GET /api/v1/hea") == b""


async def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline() -> None:
    async with serving(QuickHeads) as port:
        assert await exchange(port) == b""


async def test_after_a_kept_alive_request_half_a_head_is_closed_too() -> None:
    async with serving(QuickHeads) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(HEALTH)
            async with asyncio.timeout(10):
                assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
                # A byte of the next request cancels uvicorn's keep-alive timer; the head
                # deadline takes over.
                writer.write(b"GET /api/v1/hea")
                assert await reader.read() == b""
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


class Tracked(BoundedHttpToolsProtocol):
    """The shipped protocol; each instance is remembered by a weak reference."""

    made: list[weakref.ref[BoundedHttpToolsProtocol]] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        Tracked.made.append(weakref.ref(self))


async def one_request_then_close(port: int, *, reset: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEALTH)  # keep-alive: the server arms its keep-alive timer after answering
    async with asyncio.timeout(10):
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
    if reset:  # SO_LINGER 0: the close sends a RST, the server sees ECONNRESET
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
async def test_a_connection_gone_while_kept_alive_leaves_nothing_behind(reset: bool) -> None:
    # uvicorn cancels its keep-alive timer only on a clean close: after a reset the timer
    # held the protocol (its buffers, its last request) for HTTP_KEEPALIVE_TIMEOUT, and
    # clients resetting after one request grew the process by about 1 GB in 40 s.
    Tracked.made.clear()
    async with serving(Tracked) as port:
        for _ in range(3):
            await one_request_then_close(port, reset=reset)

        def all_gone() -> bool:
            gc.collect()
            return len(Tracked.made) == 3 and all(ref() is None for ref in Tracked.made)

        await wait_until_async(all_gone, "the closed connections' protocols", timeout=10)
