"""Readiness: single-flight, never a reused result, a word per outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from service.db import Database, DatabaseUnavailable, DbState
from service.testing.polling import wait_until_async
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


# -- a busy pool -------------------------------------------------------------------------


async def connected(database: Database) -> bool:
    # A check that timed out overruns its flight by a moment, and a check right after it
    # gets that run's answer: so "until", not "the next".
    return await database.check() == DbState.CONNECTED


async def _busy(database: Database, stop: asyncio.Event, sleep: float) -> None:
    """Load: queries of `sleep` s, one after the other, until `stop`."""
    while not stop.is_set():
        try:
            async with database.connection() as con:
                await con.execute(f"SELECT pg_sleep({sleep})")
        except DatabaseUnavailable:  # a wait past DB_ACQUIRE_TIMEOUT: queue again
            pass


@asynccontextmanager
async def loaded(database_url: str, callers: int, sleep: float) -> AsyncIterator[Database]:
    """A Database of 2 connections, `callers` tasks running `sleep` s queries on it."""
    settings = test_settings(database_url, pool_min_size=2, pool_max_size=2)
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        stop = asyncio.Event()
        load = [asyncio.create_task(_busy(database, stop, sleep)) for _ in range(callers)]
        try:
            await wait_until_async(lambda: database.stats().idle == 0, "both connections lent")
            yield database
        finally:
            stop.set()
            await asyncio.gather(*load)


async def test_a_pool_busy_with_answered_queries_is_ready(database_url: str) -> None:
    # 40 callers queue for 2 connections, 50 ms each: a probe waiting its turn would wait
    # about 1 s, past the 0.5 s deadline. Connections coming back from answered queries
    # say what a probe's query would: the database answers. A pool taken out of rotation
    # because it is busy is how a traffic spike becomes an outage.
    async with loaded(database_url, 40, 0.05) as database:
        await wait_until_async(lambda: database.stats().waiting >= 30, "a queue")
        states = [await database.check() for _ in range(5)]
        assert states == [DbState.CONNECTED] * 5
        assert database.stats().opened == 2  # and nothing was replaced


async def test_a_pool_whose_connections_never_come_back_is_not_ready(database_url: str) -> None:
    async with loaded(database_url, 2, 3) as database:
        assert await database.check() == DbState.TIMEOUT
    async with Database(test_settings(database_url)) as database:
        assert await database.wait_connected(10)
        assert await database.check() == DbState.CONNECTED


async def test_a_busy_pool_that_timed_out_is_ready_again_while_still_busy(
    database_url: str,
) -> None:
    async with loaded(database_url, 40, 0.05) as database:
        held, holding = asyncio.Event(), []

        async def hold() -> None:
            async with database.connection(timeout=30):
                holding.append(True)
                await held.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        try:
            await wait_until_async(lambda: len(holding) == 2, "both connections held")
            await wait_until_async(lambda: database.stats().waiting >= 30, "a queue")
            assert await database.check() == DbState.TIMEOUT  # nothing came back
            held.set()  # the holders go; the 40 keep both connections busy
            await asyncio.gather(*holders)
            await wait_until_async(lambda: connected(database), "a check answered while busy")
        finally:
            held.set()
            await asyncio.gather(*holders)


async def test_a_write_refused_on_a_busy_pool_sends_the_next_check_to_the_server(
    database_url: str,
) -> None:
    async with loaded(database_url, 40, 0.05) as database:
        await wait_until_async(lambda: database.stats().waiting >= 30, "a queue")
        assert await database.check() == DbState.CONNECTED
        with pytest.raises(DatabaseUnavailable) as refused:
            async with database.connection(timeout=30) as con, con.transaction(readonly=True):
                await con.execute("CREATE TABLE refused (n int)")
        assert refused.value.reason == DbState.READ_ONLY
        # The server is asked again: the probe queues behind the 40 (about 1 s).
        assert await database.check() == DbState.TIMEOUT
        # That check's query was sent after the refusal: connections coming back answer
        # for the server again.
        await wait_until_async(lambda: connected(database), "a check answered while busy")
