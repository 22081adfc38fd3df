"""The service's start-up hook: DB_MIGRATE_ON_STARTUP, then one log line of the status.

Run by the app's lifespan each time the pool connects, before readiness can say 200; the
work runs in a thread on the migrate command's own driver (psycopg), so a failure keeps
the service not ready and is retried with the connector's backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..settings import Settings
from .connection import Target
from .runner import Runner
from .safety import Timeouts
from .status import status

log = logging.getLogger("service.migrations")


def startup_hook(settings: Settings) -> Callable[[object], Awaitable[None]]:
    """A `Database(on_connected=...)` hook for these settings (the new pool is not used)."""

    async def on_connected(pool: object) -> None:
        await asyncio.to_thread(_migrate_and_report, settings)

    return on_connected


def _migrate_and_report(settings: Settings) -> None:
    target = Target.from_settings(settings)
    if settings.migrate_on_startup:
        # Under the same lock as the command; never serving a half-migrated schema. The
        # status from the same run: the files read once, no second connection.
        lock_timeout, timeouts = settings.migrate_lock_timeout, Timeouts.from_settings(settings)
        with Runner(target, lock_timeout=lock_timeout, timeouts=timeouts) as runner:
            count = len(runner.apply())
            states = [line.state for line in runner.status()]
        log.info("migrations.applied_on_startup count=%d", count)
    else:
        states = [line.state for line in status(target)]
    log.info(
        "migrations.status applied=%d pending=%d changed=%d missing=%d",
        states.count("applied"),
        states.count("pending"),
        states.count("changed"),
        states.count("missing"),
    )
