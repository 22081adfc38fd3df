"""The service through a real PgBouncer in transaction mode, in front of a cluster we own.

PgBouncer comes from the Debian package (tests/support/pgbouncer.py starts it); the tests
skip, saying why, only where the binary is absent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import create_app, db_connection
from service.db import Database
from tests.support.apps import running, started, test_settings
from tests.support.cluster import Cluster
from tests.support.pgbouncer import BINARY, MISSING
from tests.support.pgbouncer import pgbouncer as running_pgbouncer
from tests.support.polling import wait_until_async

pytestmark = pytest.mark.skipif(BINARY is None, reason=MISSING)


@pytest.fixture
def pgbouncer(owned_cluster: Cluster) -> Iterator[str]:
    """A transaction-mode PgBouncer in front of `owned_cluster`; yields its URL."""
    directory = owned_cluster.data.parent / f"pgbouncer-{owned_cluster.port}"
    with running_pgbouncer(owned_cluster.port, directory) as url:
        yield url


async def _number(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        value = await con.fetchval("SELECT $1::int", int(request.path_params["n"]))
        async with con.transaction():
            await con.execute("SELECT pg_sleep(0)")
            in_tx = await con.fetchval("SELECT $1::int + $2::int", value, 1)
    return JSONResponse({"n": value, "next": in_tx})


async def test_the_service_through_transaction_mode_under_load(pgbouncer: str) -> None:
    app = create_app(test_settings(pgbouncer, statement_cache_size=0, pool_max_size=10))
    app.router.routes.append(Route("/n/{n:int}", _number, methods=["GET"]))
    async with running(app) as client:
        database: Database = app.state.lifespan_state["db"]
        assert await database.wait_connected(10)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(200):
            queue.put_nowait(n)
        failures: list[str] = []
        answered: set[int] = set()

        async def worker() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                response = await client.get(f"/n/{n}")
                if response.status_code != 200 or response.json() != {"n": n, "next": n + 1}:
                    failures.append(f"/n/{n}: {response.status_code} {response.text}")
                answered.add(n)
                if n % 10 == 0:
                    ready = await client.get("/api/v1/ready")
                    if ready.status_code != 200:
                        failures.append(f"/ready: {ready.status_code} {ready.text}")

        await asyncio.gather(*(worker() for _ in range(50)))
        metrics = (await client.get("/metrics")).text
    assert failures == []
    assert answered == set(range(200))
    assert 'db_ready_checks_total{outcome="connected"} 20.0' in metrics
    assert "db_connections_lost_total 0.0" in metrics


async def test_statement_cache_breaks_in_transaction_mode(pgbouncer: str) -> None:
    """Why DB_STATEMENT_CACHE_SIZE=0: asyncpg's named prepared statements live on one
    server connection, and the next transaction may run on another."""
    with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
        await _repeat_after_its_server_is_taken(pgbouncer, statement_cache_size=100)


async def test_the_same_query_passes_with_the_cache_off(pgbouncer: str) -> None:
    assert await _repeat_after_its_server_is_taken(pgbouncer, statement_cache_size=0) == 2


async def _repeat_after_its_server_is_taken(pgbouncer: str, statement_cache_size: int) -> int:
    """Run a query, let another client hold that server connection in a transaction, and
    run the query again: PgBouncer must hand the client a different server connection."""
    query = "SELECT $1::int + 0 * pg_backend_pid()"
    server_pid = "SELECT pg_backend_pid()"
    client = await asyncpg.connect(pgbouncer, statement_cache_size=statement_cache_size)
    others = [await asyncpg.connect(pgbouncer, statement_cache_size=0) for _ in range(3)]
    try:
        async with client.transaction():  # pin the server, so we know which one ran it
            assert await client.fetchval(query, 1) == 1
            first = await client.fetchval(server_pid)
        holders = []
        for other in others:  # the pool allows 4 server connections: one stays free
            transaction = other.transaction()
            await transaction.start()
            holders.append(transaction)
            if await other.fetchval(server_pid) == first:
                break
        else:
            pytest.fail("no other client got the first server connection: check the setup")
        try:
            return await client.fetchval(query, 2)
        finally:
            for transaction in holders:
                await transaction.rollback()
    finally:
        for con in (client, *others):
            await con.close()


@pytest.mark.fault
async def test_readiness_through_pgbouncer_when_postgres_restarts(
    pgbouncer: str, owned_cluster: Cluster
) -> None:
    app = create_app(test_settings(pgbouncer, statement_cache_size=0))
    app.router.routes.append(Route("/n/{n:int}", _number, methods=["GET"]))
    async with running(app) as client:
        database: Database = app.state.lifespan_state["db"]
        assert await database.wait_connected(10)
        assert (await client.get("/api/v1/ready")).status_code == 200
        owned_cluster.stop()
        words = []
        for _ in range(3):
            response = await client.get("/api/v1/ready")
            assert response.status_code == 503
            words.append(response.json()["dependencies"]["db"])
        # PgBouncer keeps the client connection and queues the query (timeout), or fails
        # it at once while its server logins fail (disconnected).
        assert set(words) <= {"timeout", "disconnected"}
        owned_cluster.start()

        # Back by itself once PgBouncer logs in again (server_login_retry).
        async def ready() -> bool:
            return (await client.get("/api/v1/ready")).status_code == 200

        await wait_until_async(ready, "readiness through PgBouncer", interval=0.1)
        assert (await client.get("/n/7")).json() == {"n": 7, "next": 8}


async def _sleep(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        await con.execute("SELECT pg_sleep($1)", 30.0)
    return JSONResponse({})  # pragma: no cover - never reached: the query times out


async def test_a_timed_out_query_is_cancelled_on_the_server_through_pgbouncer(
    pgbouncer: str, owned_cluster: Cluster
) -> None:
    settings = test_settings(pgbouncer, statement_cache_size=0, command_timeout=0.3)
    app = create_app(settings, routes=[Route("/sleep", _sleep)])

    def sleeping() -> int:
        with psycopg.connect(owned_cluster.url(), autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
                " AND state = 'active' AND pid <> pg_backend_pid()"
            ).fetchone()
        return int(row[0]) if row else -1

    async with running(app) as client:
        await started(app)
        response = await client.get("/sleep")
        assert (response.status_code, response.json()) == (503, {"error": "database timeout"})
        async with asyncio.timeout(15):  # PgBouncer forwards the cancel request
            while await asyncio.to_thread(sleeping) != 0:
                await asyncio.sleep(0.05)
        assert (await client.get("/api/v1/ready")).status_code == 200


async def test_the_idle_in_transaction_timeout_is_left_out_and_alter_role_reaches_the_server(
    pgbouncer: str, owned_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """PgBouncer refuses start-up parameters it does not forward: the service connects
    without it, says so once, and the role's setting is what reaches the server."""
    caplog.set_level(logging.WARNING, logger="service.db")
    await asyncio.to_thread(
        owned_cluster.query, "ALTER ROLE postgres SET idle_in_transaction_session_timeout = '7s'"
    )
    app = create_app(test_settings(pgbouncer, statement_cache_size=0, pool_min_size=2))
    app.router.routes.append(Route("/n/{n:int}", _number, methods=["GET"]))
    async with running(app) as client:
        await started(app)
        assert (await client.get("/api/v1/ready")).status_code == 200
        assert (await client.get("/n/3")).json() == {"n": 3, "next": 4}
        database: Database = app.state.lifespan_state["db"]
        async with database.connection() as con:
            timeout = await con.fetchval("SHOW idle_in_transaction_session_timeout")
    assert timeout == "7s"
    messages = [record.getMessage() for record in caplog.records]
    refused = [message for message in messages if "startup_parameter_refused" in message]
    assert refused == [
        "db.startup_parameter_refused name=idle_in_transaction_session_timeout (PgBouncer?): "
        "not sent; set it on the server instead (ALTER ROLE … SET)"
    ]
