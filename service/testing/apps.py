"""In-process apps for tests: settings with short bounds, a factory's app on a test's
database, its lifespan run, an HTTP client (httpx over ASGI, no socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..settings import DatabaseURL, Settings

if TYPE_CHECKING:  # loaded when a test runs an app: the `settings` fixture needs none of them
    import httpx
    from starlette.applications import Starlette

    from ..db import Database

__all__ = ["build_app", "running", "started", "test_settings"]


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


def build_app(factory: Callable[..., Any], settings: Settings) -> Any:
    """`factory`'s app on `settings`.

    A factory that takes an argument is given them (`create_app(settings)`); one that takes
    none (the README's `def app(): return create_app(routes=...)`) gets them from every
    `Settings.from_env()` call made while it runs, so neither the environment nor `.env`
    can point a test's app at another database.
    """
    from ..web.serve import takes_settings

    if takes_settings(factory):
        return factory(settings)
    original = Settings.__dict__["from_env"]
    setattr(Settings, "from_env", classmethod(lambda cls, *args, **kwargs: settings))  # noqa: B010
    try:
        return factory()
    finally:
        setattr(Settings, "from_env", original)  # noqa: B010


async def started(app: Starlette, timeout: float = 10) -> Database:
    """The app's Database, once its pool is connected (the lifespan must be running)."""
    database: Database = app.state.lifespan_state["db"]
    assert await database.wait_connected(timeout), (
        f"the app's pool did not connect in {timeout:g} s: {database.state}"
    )
    return database


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an HTTP client on the test's own loop."""
    import httpx

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
