"""The serve command owns the process: it tunes the garbage collector around the app's life."""

from __future__ import annotations

import gc
from typing import Any

from service.web.serve import YOUNG_GC_THRESHOLD, TunedCollector


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
