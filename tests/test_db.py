"""The pool, the request-scoped connection helper and the readiness check, on real PostgreSQL.

Maps the original design's engine, session and initialization classes onto asyncpg.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest

from service.db import Database, DatabaseUnavailable, DbState
from service.db import pool as dbmod
from service.db.connection import classify
from service.db.opening import APPLICATION_NAME
from service.settings import Settings
from tests.support.apps import test_settings
from tests.support.cluster import free_port
from tests.support.polling import wait_until_async
from tests.support.proxy import TcpProxy

# -- pool (the original "engine" class: creation, settings, one per app) ----------------


async def test_pool_is_created_with_the_configured_settings(database_url: str) -> None:
    settings = test_settings(database_url, pool_min_size=2, pool_max_size=4, command_timeout=7)
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        pool = database._pool
        assert pool is not None
        assert (pool.get_min_size(), pool.get_max_size()) == (2, 4)
        assert pool.get_size() == 2  # the floor is opened up front
        async with database.connection() as con:
            name = await con.fetchval("SELECT current_setting('application_name')")
            assert name == APPLICATION_NAME
            assert con._con._config.command_timeout == 7
    assert database.stats().size == 0
    assert database.state == DbState.CLOSED


async def test_statement_cache_size_is_applied(database_url: str) -> None:
    async with Database(test_settings(database_url, statement_cache_size=0)) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            await con.fetchval("SELECT $1::int", 1)
            assert len(con._con._stmt_cache) == 0
    async with Database(test_settings(database_url, statement_cache_size=10)) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            before = len(con._con._stmt_cache)  # the pool's role check may be cached already
            await con.fetchval("SELECT $1::int", 1)
            assert len(con._con._stmt_cache) == before + 1


async def test_importing_the_package_opens_nothing() -> None:
    assert not [name for name in vars(dbmod) if isinstance(vars(dbmod)[name], asyncpg.Pool)]


# -- connection helper (the original "session" class: creation, cleanup, dependency) -----


async def test_helper_gives_a_working_connection_and_releases_it(database: Database) -> None:
    async with database.connection() as con:
        assert await con.fetchval("SELECT 40 + 2") == 42
        stats = database.stats()
        assert stats.idle == stats.size - 1
    assert _all_idle(database)


def _all_idle(database: Database) -> bool:
    stats = database.stats()
    return stats.size > 0 and stats.idle == stats.size


async def test_helper_releases_when_the_block_raises(database: Database) -> None:
    with pytest.raises(ZeroDivisionError):
        async with database.connection() as con:
            await con.execute("SELECT 1")
            1 / 0  # noqa: B018
    assert _all_idle(database)
    with pytest.raises(asyncpg.UndefinedTableError):
        async with database.connection() as con:
            await con.execute("SELECT * FROM no_such_table")
    assert _all_idle(database)
    async with database.connection() as con:  # the connection is still good
        assert await con.fetchval("SELECT 1") == 1


async def test_helper_acquire_wait_is_bounded(database_url: str) -> None:
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=1, acquire_timeout=0.2)
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        async with database.connection():
            with pytest.raises(DatabaseUnavailable) as caught:
                async with database.connection():
                    pass  # pragma: no cover - never reached
        assert caught.value.reason == DbState.TIMEOUT


async def test_helper_before_the_pool_exists_raises_unavailable() -> None:
    database = Database(test_settings("postgresql://u@127.0.0.1:1/d"))
    with pytest.raises(DatabaseUnavailable):
        async with database.connection():
            pass  # pragma: no cover - never reached


async def test_cancelled_query_closes_the_connection_instead_of_reusing_it(
    database: Database,
) -> None:
    async with database.connection() as con:
        first_pid = await con.fetchval("SELECT pg_backend_pid()")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            async with database.connection() as con:
                assert await con.fetchval("SELECT pg_backend_pid()") == first_pid
                await con.execute("SELECT pg_sleep(30)")
    async with database.connection() as con:
        assert await con.fetchval("SELECT pg_backend_pid()") != first_pid


async def test_old_connections_are_retired_at_release(database_url: str) -> None:
    async with Database(test_settings(database_url, pool_max_lifetime=0.05)) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            first = await con.fetchval("SELECT pg_backend_pid()")
            await asyncio.sleep(0.1)
        async with database.connection() as con:
            assert await con.fetchval("SELECT pg_backend_pid()") != first


async def test_young_connections_are_reused(database: Database) -> None:
    async with database.connection() as con:
        first = await con.fetchval("SELECT pg_backend_pid()")
    async with database.connection() as con:
        assert await con.fetchval("SELECT pg_backend_pid()") == first


# -- initialization: migrations in place, health check success and failure ---------------


def test_template_database_is_migrated(database_url: str) -> None:
    with psycopg.connect(database_url) as con:
        applied = con.execute("SELECT migration_id FROM _yoyo_migration").fetchall()
    assert ("0001_baseline",) in applied


async def test_check_succeeds_on_a_working_database(database: Database) -> None:
    assert await database.check() == DbState.CONNECTED
    assert database.state == DbState.CONNECTED


async def test_check_fails_when_nothing_listens() -> None:
    async with Database(test_settings("postgresql://u@127.0.0.1:1/d")) as database:
        assert not await database.wait_connected(0.5)
        assert await database.check() == DbState.DISCONNECTED


async def test_check_names_a_missing_database(server) -> None:
    async with Database(test_settings(server.url("svc_test_does_not_exist"))) as database:
        assert not await database.wait_connected(0.5)
        assert await database.check() == DbState.UNKNOWN_DATABASE


def test_classify_words() -> None:
    assert classify(TimeoutError()) == DbState.TIMEOUT
    assert classify(ConnectionRefusedError()) == DbState.DISCONNECTED
    assert classify(asyncpg.InvalidPasswordError("")) == DbState.UNAUTHORIZED
    assert classify(asyncpg.TooManyConnectionsError("")) == DbState.UNAVAILABLE
    assert classify(asyncpg.AdminShutdownError("")) == DbState.DISCONNECTED
    assert classify(ValueError()) == DbState.ERROR


# -- integration: lifecycle, transaction rollback, concurrent connections ----------------


async def test_transaction_rolls_back_on_error(database: Database) -> None:
    async with database.connection() as con:
        await con.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
    with pytest.raises(asyncpg.UniqueViolationError):
        async with database.connection() as con:
            async with con.transaction():
                await con.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 1, "a")
                await con.execute("INSERT INTO notes (id, body) VALUES ($1, $2)", 1, "b")
    async with database.connection() as con:
        assert await con.fetchval("SELECT count(*) FROM notes") == 0


async def test_uncommitted_transaction_is_rolled_back_at_release(
    database: Database, expect_loop_exception: Callable[[str], AbstractContextManager[None]]
) -> None:
    async with database.connection() as con:
        await con.execute("CREATE TABLE items (id int)")
    # asyncpg tells the loop's exception handler when it resets a connection mid-transaction.
    resetting = expect_loop_exception("Resetting connection with an active transaction")
    with resetting, pytest.raises(RuntimeError):
        async with database.connection() as con:
            tx = con.transaction()
            await tx.start()
            await con.execute("INSERT INTO items (id) VALUES (1)")
            raise RuntimeError("handler failed mid-transaction")
    async with database.connection() as con:
        assert await con.fetchval("SELECT count(*) FROM items") == 0
        assert not con.is_in_transaction()


async def test_concurrent_connections_are_distinct_and_bounded(database_url: str) -> None:
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=4)
    async with Database(settings) as database:
        assert await database.wait_connected(10)

        async def backend() -> int:
            async with database.connection() as con:
                return await con.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.05)")

        pids = await asyncio.gather(*(backend() for _ in range(20)))
        assert 1 < len(set(pids)) <= 4


async def test_state_changes_are_logged_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with TcpProxy.before(database_url) as proxy:
        url, port = proxy.url(database_url), proxy.target_port
        async with Database(test_settings(url)) as database:
            assert await database.wait_connected(10)
            caplog.set_level(logging.INFO, logger="service.db")
            proxy.switch(free_port())  # every session closed; nothing listens there
            assert await database.check() == DbState.DISCONNECTED
            assert await database.check() == DbState.DISCONNECTED
            proxy.switch(port)
            assert await database.check() == DbState.CONNECTED
            assert await database.check() == DbState.CONNECTED
    ours = [r for r in caplog.records if r.name == "service.db"]
    messages = [r.getMessage() for r in ours if r.getMessage() != "db.closed"]
    assert messages == ["db.lost reason=disconnected", "db.connected pool_size=1"]


async def test_failing_startup_hook_keeps_the_pool_unpublished_and_logs_once(
    database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="service.db")
    monkeypatch.setattr(dbmod, "RETRY_FIRST_DELAY", 0.01)
    monkeypatch.setattr(dbmod, "RETRY_MAX_DELAY", 0.02)
    calls = 0

    async def broken_migration(pool: asyncpg.Pool) -> None:
        nonlocal calls
        calls += 1
        assert await pool.fetchval("SELECT 1") == 1  # the hook gets a working pool
        raise RuntimeError("migration 0002 failed")

    async with Database(test_settings(database_url), on_connected=[broken_migration]) as database:
        await wait_until_async(lambda: calls >= 4, "four failed start-up attempts", interval=0.01)
        assert database.stats().size == 0  # never published: readiness stays 503
        assert await database.check() == DbState.ERROR
    failures = [r.getMessage() for r in caplog.records if "startup_failed" in r.getMessage()]
    assert failures == ["db.startup_failed RuntimeError: migration 0002 failed"]


async def test_query_parameters_such_as_sslmode_keep_working(database_url: str) -> None:
    url = "postgresql+asyncpg" + database_url.removeprefix("postgresql") + "?sslmode=disable"
    settings = test_settings(
        None, database_url=Settings.from_env({"DATABASE_URL": url}, None).database_url
    )
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        assert await database.check() == DbState.CONNECTED


async def test_unset_url_connects_with_the_libpq_variables(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    parts = urlsplit(database_url)
    monkeypatch.setenv("PGHOST", parts.hostname or "")
    monkeypatch.setenv("PGPORT", str(parts.port or 5432))
    monkeypatch.setenv("PGUSER", parts.username or "")
    monkeypatch.setenv("PGPASSWORD", parts.password or "")
    monkeypatch.setenv("PGDATABASE", parts.path.lstrip("/"))
    settings = test_settings(None)
    assert settings.database_url.value is None
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            assert await con.fetchval("SELECT current_database()") == parts.path.lstrip("/")


async def test_close_during_a_startup_hook_leaves_no_connection(database_url: str, server) -> None:
    hook_running = asyncio.Event()

    async def slow_migration(pool: asyncpg.Pool) -> None:
        hook_running.set()
        await asyncio.sleep(30)

    database = Database(test_settings(database_url), on_connected=[slow_migration])
    async with database:
        await hook_running.wait()
    name = database_url.rsplit("/", 1)[1]
    with server.admin() as admin:

        def sessions() -> tuple[int, ...] | None:
            return admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchone()

        # The server sees the terminated socket close.
        await wait_until_async(lambda: sessions() == (0,), "the server to drop the session")
        left = sessions()
    assert left == (0,)


# -- what a release resets (DB_RESET_ON_RELEASE) -----------------------------------------


async def _after_release(
    database_url: str, mode: str, listen: bool, expect_loop_exception: Any
) -> tuple[str, bool, int, str]:
    """Leave session state on the pool's only connection; read it from the next acquire."""
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=1, reset_on_release=mode)
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        # Released with a transaction open: always rolled back (and asyncpg says so).
        with expect_loop_exception("Resetting connection with an active transaction"):
            async with database.connection() as con:
                await con.execute("SET application_name = 'left-behind'")
                await con.execute("SELECT pg_advisory_lock(42)")
                if listen:
                    await con.add_listener("channel_42", lambda *args: None)
                await con.transaction().start()
                await con.execute("CREATE TABLE reset_probe (id int)")
        async with database.connection() as con:
            name = await con.fetchval("SELECT current_setting('application_name')")
            rolled_back = await con.fetchval("SELECT to_regclass('reset_probe') IS NULL")
            locks = await con.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42"
            )
            channels = await con.fetchval(
                "SELECT string_agg(c, ',') FROM pg_listening_channels() AS c"
            )
    return name, rolled_back, locks, channels or ""


async def test_the_default_release_rolls_back_and_keeps_session_settings(
    database_url: str, expect_loop_exception: Any
) -> None:
    name, rolled_back, locks, _ = await _after_release(
        database_url, "rollback", False, expect_loop_exception
    )
    assert rolled_back  # the guarantee: an open transaction never survives a release
    # Session state set with plain SQL stays, as with SQLAlchemy's pool (the original
    # design), psycopg_pool and pgx: use SET LOCAL, or DB_RESET_ON_RELEASE=full.
    assert (name, locks) == ("left-behind", 1)


@pytest.mark.filterwarnings("ignore:.*active notification listener")  # left on purpose
@pytest.mark.parametrize("mode", ["rollback", "full"])
async def test_a_listener_left_behind_gets_the_full_reset(
    database_url: str, mode: str, expect_loop_exception: Any
) -> None:
    name, rolled_back, locks, channels = await _after_release(
        database_url, mode, True, expect_loop_exception
    )
    assert rolled_back and channels == ""  # no server-side LISTEN outlives its handler
    assert (name, locks) == (APPLICATION_NAME, 0)


async def test_a_full_reset_clears_session_settings_and_advisory_locks(
    database_url: str, expect_loop_exception: Any
) -> None:
    name, rolled_back, locks, _ = await _after_release(
        database_url, "full", False, expect_loop_exception
    )
    assert rolled_back
    assert (name, locks) == (APPLICATION_NAME, 0)


# -- the server-side backstop: DB_IDLE_IN_TRANSACTION_TIMEOUT ----------------------------

IDLE_IN_TRANSACTION = "SELECT current_setting('idle_in_transaction_session_timeout')"


@pytest.mark.parametrize("mode", ["rollback", "full"])
async def test_every_connection_has_the_idle_in_transaction_timeout_and_resets_keep_it(
    database_url: str, mode: str
) -> None:
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=1, reset_on_release=mode)
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            assert await con.fetchval(IDLE_IN_TRANSACTION) == "1min"  # the 60 s default
            await con.execute("SET work_mem = '7MB'")
            await con.execute("SET idle_in_transaction_session_timeout = 0")
        async with database.connection() as con:  # the same connection, reset
            reset = await con.fetchval("SELECT current_setting('work_mem') <> '7MB'")
            assert reset is (mode == "full")
            # RESET ALL goes back to the session's default: the start-up parameter.
            expected = "1min" if mode == "full" else "0"
            assert await con.fetchval(IDLE_IN_TRANSACTION) == expected


@pytest.mark.parametrize(
    ("seconds", "query", "expected"),
    [(0, "", "0"), (2.5, "", "2500ms"), (60, "?idle_in_transaction_session_timeout=5000", "5s")],
)
async def test_the_idle_in_transaction_timeout_off_in_milliseconds_or_from_the_url(
    database_url: str, seconds: float, query: str, expected: str
) -> None:
    settings = test_settings(database_url + query, idle_in_transaction_timeout=seconds)
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            assert await con.fetchval(IDLE_IN_TRANSACTION) == expected


async def test_a_server_that_starts_refusing_writes_is_retried_quickly_throughout(
    database_url: str, server, caplog: pytest.LogCaptureFixture
) -> None:
    # Demoted while connected: the connector starts in the state read_only, and its
    # retries stay at 0.25-0.5 s (a switchover behind one address is short), never the
    # backoff's 5 s of an outage.
    caplog.set_level(logging.INFO, logger="service.db")
    async with Database(test_settings(database_url)) as database:
        assert await database.wait_connected(10)
        name = database_url.rsplit("/", 1)[1].split("?")[0]
        with server.admin() as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        await database.expire_connections()
        attempts = 0
        connect_once = database._connect_once

        async def counted() -> asyncpg.Pool:
            nonlocal attempts
            attempts += 1
            return await connect_once()

        database._connect_once = counted  # type: ignore[method-assign]
        assert await database.check() == DbState.READ_ONLY
        # Four attempts, 0.25, 0.5 and 0.5 s apart, each on a server refusing writes.
        await wait_until_async(lambda: attempts >= 4, "four attempts")
    delays = [r.getMessage() for r in caplog.records if r.getMessage().startswith("db.retry")]
    assert delays == ["db.retry in 0.2s", "db.retry in 0.5s"]
