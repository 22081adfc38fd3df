"""Faults on a cluster each test owns: stopped, hung (SIGSTOP), restarted, wrong password,
flooded, and the process told to stop while the database hangs."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import create_app, db_connection
from service.db import Database
from tests.support.apps import running, test_settings
from tests.support.cluster import Cluster
from tests.support.polling import wait_until, wait_until_async
from tests.support.process import READY, ServiceProcess

pytestmark = pytest.mark.fault
SECRET = "Hunter2-not-for-logs"


def _db(app) -> Database:
    return app.state.lifespan_state["db"]


async def _ready_state(client) -> tuple[int, str]:
    response = await client.get(READY)
    return response.status_code, response.json()["dependencies"]["db"]


async def test_degraded_start_then_ready_by_itself(
    owned_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.db")
    await asyncio.to_thread(owned_cluster.stop)
    app = create_app(test_settings(owned_cluster.url()))
    async with running(app) as client:
        assert (await client.get("/api/v1/health")).status_code == 200
        assert await _ready_state(client) in {(503, "connecting"), (503, "disconnected")}
        # The first attempt is under way; wait for its outcome.
        await wait_until_async(lambda: _db(app).state != "connecting", "the first attempt")
        for _ in range(5):
            assert await _ready_state(client) == (503, "disconnected")
        await asyncio.to_thread(owned_cluster.start)
        assert await _db(app).wait_connected(15)
        assert await _ready_state(client) == (200, "connected")
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("db.unavailable reason=disconnected") == 1  # once, not per probe
    assert any(m.startswith("db.retry in ") for m in messages)
    assert messages.count("db.connected pool_size=1") == 1


async def test_stopped_database_is_reported_then_recovered(owned_cluster: Cluster) -> None:
    app = create_app(test_settings(owned_cluster.url()))
    async with running(app) as client:
        assert await _db(app).wait_connected(10)
        assert await _ready_state(client) == (200, "connected")
        await asyncio.to_thread(owned_cluster.stop)
        assert await _ready_state(client) == (503, "disconnected")
        assert (await client.get("/api/v1/health")).status_code == 200
        await asyncio.to_thread(owned_cluster.start)
        assert await _ready_state(client) == (200, "connected")


def _app_with_query_route(settings):
    app = create_app(settings)

    async def pid(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            return JSONResponse({"pid": await con.fetchval("SELECT pg_backend_pid()")})

    app.router.routes.append(Route("/pid", pid))
    return app


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_first_request_after_a_restart_succeeds(owned_cluster: Cluster, mode: str) -> None:
    app = _app_with_query_route(test_settings(owned_cluster.url(), pool_min_size=3))
    async with running(app) as client:
        assert await _db(app).wait_connected(10)
        before = (await client.get("/pid")).json()["pid"]
        await asyncio.to_thread(owned_cluster.stop, mode)
        await asyncio.to_thread(owned_cluster.start)
        # No dead connection reaches a caller: the very first answers succeed.
        response = await client.get("/pid")
        assert response.status_code == 200
        assert response.json()["pid"] != before
        assert await _ready_state(client) == (200, "connected")


async def test_hung_database_probe_answers_timeout_within_the_deadline(
    owned_cluster: Cluster,
) -> None:
    app = create_app(test_settings(owned_cluster.url(), ready_timeout=0.3))
    async with running(app) as client:
        assert await _db(app).wait_connected(10)
        owned_cluster.pause()
        try:
            # Each answer arrives (the client itself would give up after 5 s).
            for _ in range(3):
                assert await asyncio.wait_for(_ready_state(client), 5) == (503, "timeout")
        finally:
            owned_cluster.resume()

        # Ready again by itself (how soon is scripts/faults' figure: a 0.3 s deadline can
        # pass while a loaded machine reopens the expired connections).
        async def ready() -> bool:
            return await _ready_state(client) == (200, "connected")

        await wait_until_async(ready, "readiness to be back", timeout=10)


async def test_a_probe_connection_closed_after_a_long_hang_raises_nothing_later(
    owned_cluster: Cluster,
) -> None:
    """The probe's connection waits CANCEL_TIMEOUT (2 s) in the background for the hung
    server, then is closed; the pool has taken it back by then (expired after the failed
    probe), and nothing may escape to the loop's exception handler."""
    app = create_app(test_settings(owned_cluster.url(), ready_timeout=0.3))
    async with running(app) as client:
        database = _db(app)
        assert await database.wait_connected(10)
        owned_cluster.pause()
        try:
            assert await _ready_state(client) == (503, "timeout")
            await wait_until_async(lambda: database.stats().releasing, "the background release")
            await wait_until_async(
                lambda: not database.stats().releasing,
                "the background release to end",
                timeout=10,
            )
        finally:
            owned_cluster.resume()
        assert await _ready_state(client) == (200, "connected")


async def test_probe_flood_on_a_hung_database_never_exhausts_the_pool(
    owned_cluster: Cluster,
) -> None:
    settings = test_settings(owned_cluster.url(), pool_min_size=1, pool_max_size=3)
    app = _app_with_query_route(settings)
    async with running(app) as client:
        assert await _db(app).wait_connected(10)
        owned_cluster.pause()
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(_ready_state(client) for _ in range(300))), 10
            )
            assert set(answers) == {(503, "timeout")}
        finally:
            owned_cluster.resume()
        assert (await client.get("/pid")).status_code == 200


async def test_wrong_password_is_unauthorized_and_never_printed(
    scratch_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Not under pytest's tmp_path: see tests/test_password_file.py's `secured`.
    cluster = Cluster(scratch_dir / f"pw-{uuid.uuid4().hex[:8]}").init(password=SECRET)
    await asyncio.to_thread(cluster.start)
    try:
        wrong = f"{SECRET}-wrong"
        seen: list[str] = []
        app = create_app(test_settings(cluster.url(password=wrong)))
        async with running(app) as client:

            async def answered() -> httpx.Response | None:
                response = await client.get(READY)
                settled = response.json()["dependencies"]["db"] != "connecting"
                return response if settled else None

            response = await wait_until_async(answered, "an answer past connecting", interval=0.1)
            assert (response.status_code, response.json()["dependencies"]["db"]) == (
                503,
                "unauthorized",
            )
            seen += [response.text, repr(app.state.settings)]

        app = create_app(test_settings(cluster.url(password=SECRET)))
        async with running(app) as client:
            assert await _db(app).wait_connected(10)
            response = await client.get(READY)
            assert response.status_code == 200
            seen.append(response.text)
            await asyncio.to_thread(cluster.stop)
            response = await client.get(READY)
            assert response.status_code == 503
            seen += [response.text, repr(app.state.settings)]
    finally:
        cluster.destroy()
    seen.append(caplog.text)
    for text in seen:
        assert SECRET not in text


def _serve(url: str, **env: str) -> ServiceProcess:
    """The real service, chatty (debug logs kept for the assertions), with short bounds."""
    bounds = {"DB_READY_TIMEOUT": "0.3", "DB_CLOSE_TIMEOUT": "1", "DB_POOL_MIN_SIZE": "2"}
    chatty = {"LOG_LEVEL": "debug", "ACCESS_LOG": "true"}
    return ServiceProcess(url, capture_output=True, **{**bounds, **chatty, **env})


def _pool_in_use(service: ServiceProcess) -> float:
    """The service's db_pool_in_use gauge (reading /metrics never touches the database)."""
    answer = service.fetch("/metrics")
    assert answer is not None and answer[0] == 200, answer
    for family in text_string_to_metric_families(answer[1].decode()):
        if family.name == "db_pool_in_use":
            return family.samples[0].value
    raise AssertionError("no db_pool_in_use in /metrics")


def _service_sessions(cluster: Cluster) -> int:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as con:
        row = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'service'"
        ).fetchone()
    return row[0] if row else -1


def test_sigterm_closes_every_connection(owned_cluster: Cluster) -> None:
    with _serve(owned_cluster.url(password=SECRET)) as service:
        service.start()
        assert _service_sessions(owned_cluster) >= 1
        returncode = service.terminate(timeout=30)
        output = service.output()
    # uvicorn re-raises SIGTERM after a graceful shutdown: killed by SIGTERM is success.
    assert returncode in (0, -signal.SIGTERM), output
    assert "db.closed" in output
    assert SECRET not in output
    assert _service_sessions(owned_cluster) == 0


def test_sigterm_with_a_hung_database_stays_bounded(owned_cluster: Cluster) -> None:
    # A readiness deadline of 1 s keeps the probe in flight long enough to be seen there.
    with _serve(owned_cluster.url(), DB_READY_TIMEOUT="1") as service:
        service.start()
        owned_cluster.pause()
        try:
            # The request is on the wire before SIGTERM; its answer is read after.
            in_flight = socket.create_connection(("127.0.0.1", service.port), timeout=30)
            in_flight.sendall(f"GET {READY} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            # In flight once its check holds a connection (the hung server never answers it).
            wait_until(
                lambda: _pool_in_use(service) >= 1, "the probe to hold a connection", interval=0.01
            )
            # Bounded: DB_CLOSE_TIMEOUT is 1 s; a hang here fails the test at 30 s.
            returncode = service.terminate(timeout=30)
            output = service.output()
            answer = in_flight.makefile("rb").read().decode()
            in_flight.close()
        finally:
            owned_cluster.resume()
    assert returncode in (0, -signal.SIGTERM), output
    # The in-flight probe was answered (503 timeout), not cut off.
    assert answer.startswith("HTTP/1.1 503"), answer
    assert '"db":"timeout"' in answer
    assert "db.close timed out after 1.0s; terminating" in output or "db.closed" in output
    # The resumed server notices the closed sockets.
    wait_until(lambda: _service_sessions(owned_cluster) == 0, "the server to drop the sessions")
    assert _service_sessions(owned_cluster) == 0
