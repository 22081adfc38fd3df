"""`python -m service serve`: uvicorn (uvloop, httptools with bounded heads) owning the process.

The process owner, not the app factory, tunes what is process-wide: the cyclic garbage
collector. An app built by `create_app` and run another way (tests, another ASGI server)
leaves the process as it found it; docs/performance.md says what to set there.
"""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import Settings, SettingsError

APP_VARIABLE = "SERVICE_SERVE_APP"  # the --app factory, for each worker process
YOUNG_GC_THRESHOLD = 10_000  # allocations between young collections; CPython's default is 700


def serve(settings: Settings, app: str) -> int:
    """Serve the factory `app` (MODULE:FACTORY) with every setting of the service."""
    import uvicorn

    from ..logs import log_config
    from .http import BoundedHttpToolsProtocol
    from .tracing import check_installed

    check_installed(settings)
    load_factory(app)  # a typo is one line here, not uvicorn's log and exit 1
    os.environ[APP_VARIABLE] = app  # worker processes inherit it
    uvicorn.run(
        f"{__name__}:served",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,  # httptools, with the request head bounded
        log_config=log_config(settings.log_level, settings.log_format, settings.secrets()),
        access_log=settings.access_log,
        # Typed int, but uvicorn only passes it to asyncio.wait_for, which takes a float.
        timeout_graceful_shutdown=settings.shutdown_timeout,  # type: ignore[arg-type]
        # Typed int, but uvicorn only passes it to loop.call_later, which takes a float.
        timeout_keep_alive=settings.http_keepalive_timeout,  # type: ignore[arg-type]
        lifespan="on",
        proxy_headers=False,
        server_header=False,
    )
    return 0


def load_factory(spec: str, option: str = "--app") -> Callable[..., Any]:
    """The app factory MODULE:FACTORY names; SettingsError naming `option` if there is none."""
    from uvicorn.importer import ImportFromStringError, import_from_string

    try:
        factory = import_from_string(spec)
    except ImportFromStringError as exc:
        raise SettingsError(f"{option} {spec}: {exc}") from None
    if not callable(factory):
        raise SettingsError(f"{option} {spec}: {type(factory).__name__} is not an app factory")
    return factory  # type: ignore[no-any-return]


def takes_settings(factory: Callable[..., Any]) -> bool:
    """Whether `factory` takes an argument (the Settings) or none (it reads its own)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it bare
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional for p in parameters)


def build(factory: Callable[..., Any], settings: Settings | None = None) -> Any:
    """`factory(settings)` when it takes an argument (read from the environment if not
    given), else `factory()`."""
    if takes_settings(factory):
        return factory(settings or Settings.from_env())
    return factory()


def served() -> ASGIApp:
    """uvicorn's factory in each worker: the --app factory's app, the collector tuned."""
    return TunedCollector(build(load_factory(os.environ[APP_VARIABLE])))


class TunedCollector:
    """Once the app has started, freeze what start-up made out of the cyclic GC and collect
    young objects less often; at shutdown, put both back.

    Requests parked on a readiness check outlive young collections; under a probe flood the
    default threshold made full collections, each walking every module and class, the
    readiness p99. With start-up frozen a full collection is short, and at this threshold
    a flood's parked requests trigger none (figures: docs/performance.md).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._thresholds = gc.get_threshold()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def tune(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                gc.freeze()
                gc.set_threshold(YOUNG_GC_THRESHOLD, *self._thresholds[1:])
            elif message["type"].startswith("lifespan.shutdown."):
                gc.set_threshold(*self._thresholds)
                gc.unfreeze()
            await send(message)

        await self.app(scope, receive, tune)
