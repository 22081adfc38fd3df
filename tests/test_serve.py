"""The serve command owns the process: it tunes the garbage collector around the app's life,
and keeps idle HTTP connections open for HTTP_KEEPALIVE_TIMEOUT."""

from __future__ import annotations

import gc
import socket
import time
from typing import Any

from service.web.http import HEAD_TIMEOUT
from service.web.serve import YOUNG_GC_THRESHOLD, TunedCollector
from tests.support.process import ServiceProcess


async def test_the_collector_is_tuned_once_started_and_put_back_at_shutdown() -> None:
    before = (gc.get_threshold(), gc.get_freeze_count())
    seen: list[tuple[str, tuple[int, ...]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, str]:
        return next(incoming)

    async def send(message: dict[str, str]) -> None:
        seen.append((message["type"], gc.get_threshold()))
        if message["type"] == "lifespan.startup.complete":
            assert gc.get_freeze_count() > 0  # start-up's objects are out of the collector

    try:
        await TunedCollector(app)({"type": "lifespan"}, receive, send)
    finally:
        gc.set_threshold(*before[0])
        gc.unfreeze()
    assert seen == [
        ("lifespan.startup.complete", (YOUNG_GC_THRESHOLD, *before[0][1:])),
        ("lifespan.shutdown.complete", before[0]),
    ]
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


async def test_http_passes_through_untouched() -> None:
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    await TunedCollector(app)({"type": "http"}, None, None)
    assert calls == ["http"]


# -- HTTP keep-alive: HTTP_KEEPALIVE_TIMEOUT, not the head deadline ----------------------

HEALTH_REQUEST = b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n"
NOTHING_LISTENS = "postgresql://app@127.0.0.1:1/app"  # liveness needs no database


def _served(**env: str) -> ServiceProcess:
    return ServiceProcess(NOTHING_LISTENS, capture_output=True, ready_path="/api/v1/health", **env)


def _answered(sock: socket.socket) -> bytes:
    """Send a liveness request and read its whole response; its status line."""
    sock.sendall(HEALTH_REQUEST)
    reader = sock.makefile("rb")
    status = reader.readline().rstrip(b"\r\n")
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    reader.read(length)
    return status


def test_an_idle_keep_alive_connection_lasts_http_keepalive_timeout() -> None:
    """A load balancer reuses its idle connections for up to its own idle timeout (AWS ALB:
    60 s): the service must not close one first, neither at uvicorn's old 5 s nor at the
    10 s head deadline, which starts only with a request's first byte."""
    with _served() as kept, _served(HTTP_KEEPALIVE_TIMEOUT="1") as short:
        kept.start()
        short.start()
        with (
            socket.create_connection(("127.0.0.1", kept.port), timeout=10) as idle,
            socket.create_connection(("127.0.0.1", short.port), timeout=10) as closed,
        ):
            assert _answered(idle) == b"HTTP/1.1 200 OK"
            assert _answered(closed) == b"HTTP/1.1 200 OK"
            assert closed.recv(1) == b""  # closed by the server after HTTP_KEEPALIVE_TIMEOUT
            time.sleep(HEAD_TIMEOUT + 1)  # idle past the head deadline too
            assert _answered(idle) == b"HTTP/1.1 200 OK"  # the same connection serves
