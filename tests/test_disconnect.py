"""The disconnect watch on its own: no PostgreSQL, a fake receive channel driven by events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.db.connection import CLIENT_DISCONNECTED
from service.web.disconnect import DisconnectWatch, Sweeper
from tests.support.polling import wait_until_async


class Channel:
    """An ASGI receive channel: the request, then whatever the test puts in."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reads = 0

    async def __call__(self) -> dict[str, Any]:
        self.reads += 1
        return await self.queue.get()


async def _handler_holding(
    watch_box: list[DisconnectWatch], sweeper: Sweeper, channel: Channel
) -> None:
    watch = DisconnectWatch(sweeper, channel, asyncio.current_task())  # type: ignore[arg-type]
    watch_box.append(watch)
    watch.hold()
    try:
        await asyncio.Event().wait()  # a long query
    finally:
        watch.let_go()
        watch.stop()


async def test_a_handler_holding_a_connection_across_two_sweeps_is_cancelled_on_disconnect() -> (
    None
):
    sweeper, channel, box = Sweeper(0.01), Channel(), []
    handler = asyncio.ensure_future(_handler_holding(box, sweeper, channel))
    await wait_until_async(lambda: channel.reads == 1, "the watch reading the channel")
    await channel.queue.put({"type": "http.disconnect"})
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await handler
    assert cancelled.value.args == (CLIENT_DISCONNECTED,)
    assert box[0].fired


async def test_a_short_hold_never_starts_a_watch() -> None:
    sweeper, channel = Sweeper(0.01), Channel()
    watch = DisconnectWatch(sweeper, channel, asyncio.current_task())  # type: ignore[arg-type]
    for _ in range(5):
        watch.hold()
        await asyncio.sleep(0)
        watch.let_go()
    await asyncio.sleep(0.05)  # several sweep intervals pass with nothing held
    assert channel.reads == 0 and not watch.fired


async def test_a_body_the_watch_read_is_handed_to_the_app_and_a_started_response_is_kept() -> None:
    sweeper, channel = Sweeper(0.01), Channel()
    watch = DisconnectWatch(sweeper, channel, asyncio.current_task())  # type: ignore[arg-type]
    watch.hold()
    await wait_until_async(lambda: channel.reads == 1, "the watch reading the channel")
    body = {"type": "http.request", "body": b"{}", "more_body": False}
    await channel.queue.put(body)
    assert await watch.receive() == body
    watch.started = True  # the answer has begun: a disconnect no longer cancels
    await channel.queue.put({"type": "http.disconnect"})
    assert await watch.receive() == {"type": "http.disconnect"}
    assert not watch.fired
    watch.let_go()
    watch.stop()
