"""Queries end when their caller does: a timeout, a client that leaves, on real PostgreSQL.

Each test reads pg_stat_activity to show the query is gone from the server (a bounded poll,
no timing assertion).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service import create_app, db_connection
from service.db import Database
from service.settings import Settings
from tests.support.apps import running, started, test_settings
from tests.support.polling import wait_until_async
from tests.support.servers import Server

SLEEP = "SELECT pg_sleep($1)"
SECRET_SECONDS = 987.654  # a parameter that must never reach a log line


async def sleep(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        await con.execute(SLEEP, float(request.query_params.get("s", SECRET_SECONDS)))
    return JSONResponse({"slept": True})


async def echo(request: Request) -> JSONResponse:
    async with db_connection(request) as con:  # the watch starts before the body is read
        body = await request.json()
        return JSONResponse({"n": await con.fetchval("SELECT $1::int", body["n"])})


async def stream(request: Request) -> StreamingResponse:
    async with db_connection(request) as con:
        rows = await con.fetch("SELECT g FROM generate_series(1, 3) AS g")

    async def lines() -> Any:
        for row in rows:
            yield f"{row['g']}\n"

    return StreamingResponse(lines(), media_type="text/plain")


async def later(request: Request) -> Response:
    db: Database = request.state.db

    async def record() -> None:
        async with db.connection() as con:
            await con.execute("CREATE TABLE IF NOT EXISTS done (at timestamptz)")
            await con.execute("INSERT INTO done VALUES (now())")

    async with db_connection(request) as con:
        await con.execute("SELECT 1")
    return JSONResponse({"queued": True}, background=BackgroundTask(record))


ROUTES = [
    Route("/sleep", sleep),
    Route("/echo", echo, methods=["POST"]),
    Route("/stream", stream),
    Route("/later", later),
]


def _running_sleeps(server: Server, database_url: str) -> int:
    dbname = database_url.rsplit("/", 1)[1]
    with server.admin() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
            " AND query = %s",
            (dbname, SLEEP),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _our_backends(server: Server, database_url: str) -> int:
    dbname = database_url.rsplit("/", 1)[1]
    with server.admin() as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (dbname, "service"),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_query_timeout_is_a_503_and_the_query_is_cancelled_on_the_server(
    database_url: str, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service")
    settings = test_settings(database_url, command_timeout=0.3, pool_min_size=1, pool_max_size=2)
    app = create_app(settings, routes=ROUTES)
    async with running(app) as client:
        database = await started(app)
        response = await client.get("/sleep")
        assert response.status_code == 503
        assert response.json() == {"error": "database timeout"}
        assert response.headers["retry-after"] == "1"
        await wait_until_async(lambda: _running_sleeps(server, database_url) == 0, "the query ends")
        # The cancelled connection kept its slot until the server let go: no orphan beside
        # a replacement, never more backends than DB_POOL_MAX_SIZE.
        assert _our_backends(server, database_url) <= settings.pool_max_size
        assert database.stats().cancelled == {"timeout": 1, "disconnect": 0}
        assert (await client.get("/sleep", params={"s": "0"})).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'db_queries_cancelled_total{reason="timeout"} 1.0' in metrics
    timeouts = [r.getMessage() for r in caplog.records if "query_timeout" in r.getMessage()]
    assert timeouts == ["db.query_timeout route=/sleep method=GET"]
    assert not [r for r in caplog.records if str(SECRET_SECONDS) in r.getMessage()]


async def test_a_client_that_disconnects_cancels_the_handler_and_its_query(
    database_url: str, server: Server
) -> None:
    app = create_app(test_settings(database_url), routes=ROUTES)
    async with running(app):
        database = await started(app)
        leave = asyncio.Event()
        sent: list[dict[str, Any]] = []
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, Any]:
            message = next(messages, None)
            if message is not None:
                return message
            await leave.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/sleep",
            "raw_path": b"/sleep",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
            "state": dict(app.state.lifespan_state),
        }
        request = asyncio.ensure_future(app(scope, receive, send))
        await wait_until_async(lambda: _running_sleeps(server, database_url) == 1, "the query runs")
        leave.set()
        await asyncio.wait_for(request, 15)  # returns: the handler was cancelled
        assert sent == []  # nobody to answer
        await wait_until_async(lambda: _running_sleeps(server, database_url) == 0, "the query ends")
        await wait_until_async(lambda: database.stats().idle == database.stats().size, "released")
        assert database.stats().cancelled == {"timeout": 0, "disconnect": 1}
        async with database.connection() as con:  # the pool still works
            assert await con.fetchval("SELECT 1") == 1


async def test_bodies_streams_and_background_tasks_keep_working(settings: Settings) -> None:
    app = create_app(settings, routes=ROUTES)
    async with running(app) as client:
        database = await started(app)
        assert (await client.post("/echo", json={"n": 7})).json() == {"n": 7}
        assert (await client.get("/stream")).text == "1\n2\n3\n"
        assert (await client.get("/later")).json() == {"queued": True}

        async def recorded() -> bool:
            async with database.connection() as con:
                return bool(await con.fetchval("SELECT to_regclass('done') IS NOT NULL"))

        async with asyncio.timeout(15):
            while not await recorded():
                await asyncio.sleep(0.02)
        async with database.connection() as con:
            assert await con.fetchval("SELECT count(*) FROM done") == 1
        assert database.stats().cancelled == {"timeout": 0, "disconnect": 0}


async def test_saturation_metrics_count_waits_timeouts_and_holds(database_url: str) -> None:
    settings = test_settings(database_url, pool_min_size=1, pool_max_size=1, acquire_timeout=0.2)
    app = create_app(settings, routes=ROUTES)
    async with running(app) as client:
        database = await started(app)
        holding = asyncio.ensure_future(client.get("/sleep", params={"s": "1"}))
        async with asyncio.timeout(15):
            while database.stats().idle != 0:
                await asyncio.sleep(0.01)
        refused = await client.get("/sleep", params={"s": "0"})
        assert (await holding).status_code == 200
        assert refused.status_code == 503
        stats = database.stats()
        assert stats.acquire_timeouts == 1
        assert stats.waiting == 0
        assert sum(stats.acquire_seconds.counts) >= 2
        assert stats.held_seconds.total >= 1.0  # pg_sleep(1) held it at least that long
        metrics = (await client.get("/metrics")).text
    for family in (
        "db_pool_acquire_seconds_bucket",
        "db_pool_acquire_timeouts_total 1.0",
        "db_pool_waiting 0.0",
        "db_pool_held_seconds_count",
        'db_queries_cancelled_total{reason="disconnect"} 0.0',
    ):
        assert family in metrics


async def test_slow_queries_are_logged_once_without_their_parameters(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.db")
    async with Database(test_settings(database_url, slow_query_ms=50)) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            await con.execute(SLEEP, 0.123)
            await con.fetchval("SELECT 1")
    slow = [r.getMessage() for r in caplog.records if "slow_query" in r.getMessage()]
    assert len(slow) == 1
    assert slow[0].startswith("db.slow_query duration_ms=")
    assert slow[0].endswith("statement=SELECT pg_sleep($1)")
    assert "0.123" not in slow[0]


def test_slow_query_log_is_off_by_default_and_refuses_a_bad_value() -> None:
    assert Settings.from_env({}, env_file=None).slow_query_ms == 0
    with pytest.raises(ValueError, match="DB_SLOW_QUERY_MS: 'fast' is not a number"):
        Settings.from_env({"DB_SLOW_QUERY_MS": "fast"}, env_file=None)
