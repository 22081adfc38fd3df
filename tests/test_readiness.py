"""Readiness: single-flight, never a reused result, a word per outcome."""

from __future__ import annotations

import asyncio

from service.db import Database, DbState
from tests.support.apps import test_settings


def test_every_word_is_one_lower_case_token() -> None:
    words = [state.value for state in DbState]
    assert len(set(words)) == len(words)
    for word in words:
        assert word.replace("_", "").isalpha() and word.islower()


# -- single-flight ---------------------------------------------------------------------


async def test_a_flood_of_checks_shares_one_round_trip(database_url: str) -> None:
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=10)
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        results = await asyncio.gather(*(database.check() for _ in range(500)))
        assert set(results) == {DbState.CONNECTED}
        # Had any two checks run at once, the pool would have opened a second connection.
        assert database.stats().size == 1


async def test_a_finished_check_is_never_reused(database: Database, server) -> None:
    assert await database.check() == DbState.CONNECTED
    async with database.connection() as con:
        name = await con.fetchval("SELECT current_database()")
    with server.admin() as admin:  # kill every session of this database from outside
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute("ALTER DATABASE " + name + " WITH ALLOW_CONNECTIONS false")
    try:
        assert await database.check() != DbState.CONNECTED
    finally:
        with server.admin() as admin:
            admin.execute("ALTER DATABASE " + name + " WITH ALLOW_CONNECTIONS true")
    assert await database.check() == DbState.CONNECTED
