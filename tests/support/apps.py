"""In-process apps for tests: settings with short bounds, the lifespan run, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
from starlette.applications import Starlette

from service.db import Database
from service.settings import DatabaseURL, Settings


def test_settings(url: str | None, **overrides: Any) -> Settings:
    """Settings for a test: small pool, short timeouts, the given database."""
    base = Settings(
        database_url=DatabaseURL.parse(url),
        pool_min_size=1,
        pool_max_size=5,
        connect_timeout=2.0,
        ready_timeout=0.5,
        close_timeout=2.0,
        acquire_timeout=2.0,
    )
    return replace(base, **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test to collect


async def started(app: Starlette, timeout: float = 10) -> Database:
    """The app's Database, once its pool is connected (the lifespan must be running)."""
    database: Database = app.state.lifespan_state["db"]
    assert await database.wait_connected(timeout)
    return database


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an HTTP client on the test's own loop."""
    async with app.router.lifespan_context(app) as state:
        app.state.lifespan_state = state
        # Starlette re-raises after answering 500 so the server logs it; we read the answer.
        transport = httpx.ASGITransport(app=_with_state(app, state), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _with_state(app: Starlette, state: Any) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return asgi
