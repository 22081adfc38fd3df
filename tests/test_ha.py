"""High availability on a real primary and streaming standby: switchovers, demoted servers,
writes refused as read-only, read replicas (up, stopped, lagging).

One pair per module (tests/support/cluster.py's Pair): each test leaves both servers
running and the standby streaming; `ha_pair.primary` follows the roles across switchovers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import create_app, db_connection
from service.db import Database, Replicas
from service.settings import DatabaseURL
from tests.support.apps import running, started, test_settings
from tests.support.cluster import Cluster, Pair
from tests.support.pgbouncer import BINARY, MISSING, pgbouncer
from tests.support.polling import wait_until, wait_until_async
from tests.support.process import READY, ServiceProcess
from tests.support.proxy import TcpProxy
from tests.support.writes import WriteLoad, create_table

pytestmark = pytest.mark.fault
READ_ONLY_BODY = {"ready": False, "dependencies": {"db": "read_only", "redis": "unknown"}}
READ_ONLY_ANSWER = {"error": "database unavailable", "db": "read_only"}
# What a handler may send a server that turned out to be a standby.
WRITES = {
    "create": "CREATE TABLE ha_write (x int)",  # SQLSTATE 25006
    "read-write": "START TRANSACTION READ WRITE",  # 0A000, "... during recovery"
}


async def _server(request: Request) -> JSONResponse:
    read_only = request.query_params.get("replica") == "1"
    async with db_connection(request, read_only=read_only) as con:
        row = await con.fetchrow("SELECT inet_server_port() AS port, pg_is_in_recovery() AS rec")
    assert row is not None
    return JSONResponse({"port": row["port"], "recovery": row["rec"]})


def _app(url: str, on_connect: Any = None, **overrides: Any) -> Starlette:
    written: list[int] = []

    async def write(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            written.append(await con.fetchval("SELECT pg_backend_pid()"))
            await con.execute(WRITES[request.path_params["kind"]])
        return JSONResponse({})  # pragma: no cover - a standby refuses it

    app = create_app(
        test_settings(url, **overrides),
        routes=[Route("/server", _server), Route("/write/{kind}", write, methods=["POST"])],
        on_connect=on_connect,
    )
    app.state.written = written
    return app


def _db(app: Starlette) -> Database:
    return app.state.lifespan_state["db"]


def _reads(app: Starlette) -> Replicas:
    return app.state.lifespan_state["reads"]


async def _ready(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await client.get(READY)
    return response.status_code, response.json()


async def _until_ready(client: httpx.AsyncClient) -> None:
    async def ready() -> bool:
        return (await client.get(READY)).status_code == 200

    await wait_until_async(ready, "readiness to answer 200", interval=0.05)


async def _until_read_only(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    async def read_only() -> tuple[int, dict[str, Any]] | None:
        status, body = await _ready(client)
        return (status, body) if body["dependencies"]["db"] == "read_only" else None

    return await wait_until_async(read_only, "readiness to say read_only", interval=0.05)


def _sessions(cluster: Cluster) -> int:
    """The service's connections on this server (a standby answers this too)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'service'"
    return int(cluster.query(query))  # type: ignore[call-overload]


# -- the primary changes -------------------------------------------------------------------


async def test_single_host_is_read_only_on_a_standby_and_ready_after_switching_back(
    ha_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.db")
    host = ha_pair.primary
    app = _app(host.url())
    async with running(app) as client:
        await started(app)
        assert (await _ready(client))[0] == 200
        await asyncio.to_thread(ha_pair.switchover)  # host is a standby now
        assert await _until_read_only(client) == (503, READ_ONLY_BODY)
        # A handler needs a server that takes writes: 503 at once, no connection attempt.
        response = await client.get("/server")
        assert (response.status_code, response.json()) == (503, READ_ONLY_ANSWER)
        assert _db(app).stats().size == 0
        await asyncio.to_thread(ha_pair.switchover)  # host is the primary again
        await _until_ready(client)
        assert (await client.get("/server")).json() == {"port": host.port, "recovery": False}
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "reason=read_only" in m] in (
        ["db.lost reason=read_only"],
        ["db.unavailable reason=read_only"],  # the stop was seen first: reason=disconnected
    )


async def test_multi_host_follows_the_new_primary_and_leaves_nothing_on_the_old(
    ha_pair: Pair,
) -> None:
    old, new = ha_pair.primary, ha_pair.standby
    app = _app(ha_pair.url(new, old), pool_min_size=2)  # the standby first: skipped
    async with running(app) as client:
        await started(app)
        assert (await client.get("/server")).json() == {"port": old.port, "recovery": False}
        assert await asyncio.to_thread(_sessions, new) == 0
        await asyncio.to_thread(ha_pair.switchover)
        await _until_ready(client)
        assert (await client.get("/server")).json() == {"port": new.port, "recovery": False}
        await asyncio.to_thread(
            wait_until, lambda: _sessions(old) == 0, "no connection left on the demoted server"
        )
        assert await asyncio.to_thread(_sessions, new) >= 1


async def test_target_session_attrs_any_on_a_standby_is_read_only_and_never_flaps(
    ha_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.db")
    app = _app(ha_pair.standby.url(), target_session_attrs="any")
    async with running(app) as client:
        assert await _until_read_only(client) == (503, READ_ONLY_BODY)
        # The connector retries; no pool on the standby is ever published as connected.
        await wait_until_async(
            lambda: sum(r.getMessage().startswith("db.retry") for r in caplog.records) >= 2,
            "a second attempt",
        )
        assert await _ready(client) == (503, READ_ONLY_BODY)
        assert _db(app).stats().size == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "db.unavailable reason=read_only" in messages
    assert not [m for m in messages if m.startswith("db.connected")]
    # A server refusing writes is retried quickly (a switchover behind one address is
    # short), and the retry is logged once per step of the backoff, not per attempt.
    delays = [m.removeprefix("db.retry in ") for m in messages if m.startswith("db.retry")]
    assert delays == ["0.2s", "0.5s"]


@pytest.mark.skipif(BINARY is None, reason=MISSING)
async def test_readiness_sees_a_demoted_server_behind_pgbouncer(ha_pair: Pair) -> None:
    """PgBouncer (or a VIP, a DNS name) keeps the service's connections open across the
    switchover: only the readiness query's role check can tell."""
    host = ha_pair.primary
    with pgbouncer(host.port, host.data.parent / f"pgb-ready-{host.port}") as url:
        app = _app(url, statement_cache_size=0)
        async with running(app) as client:
            await started(app)
            assert (await _ready(client))[0] == 200
            await asyncio.to_thread(ha_pair.switchover)
            assert await _until_read_only(client) == (503, READ_ONLY_BODY)
            assert _db(app).stats().size == 0  # the pool through PgBouncer was closed


@pytest.mark.skipif(BINARY is None, reason=MISSING)
@pytest.mark.parametrize("kind", sorted(WRITES))
async def test_a_write_refused_by_a_standby_answers_503_and_closes_its_connection(
    ha_pair: Pair, kind: str
) -> None:
    host = ha_pair.primary
    with pgbouncer(host.port, host.data.parent / f"pgb-{kind}-{host.port}") as url:
        app = _app(url, statement_cache_size=0, pool_min_size=2)
        async with running(app) as client:
            database = await started(app)
            await asyncio.to_thread(ha_pair.switchover)  # the service's connections stay open
            closed_before = database.stats().closed
            response = await client.post(f"/write/{kind}")
            assert (response.status_code, response.json()) == (503, READ_ONLY_ANSWER)
            assert response.headers["retry-after"] == "1"
            assert database.stats().writes_refused == 1
            await wait_until_async(  # that connection, not reused (its listener runs soon)
                lambda: database.stats().closed == closed_before + 1, "the connection closed"
            )
            # The idle one was expired: replaced at its next acquire, not reused. (The
            # pool refills its floor of 2 with a new connection meanwhile.)
            await wait_until_async(lambda: database.stats().idle == 2, "the floor refilled")
            opened_before = database.stats().opened
            async with database.connection(), database.connection():
                pass
            assert database.stats().opened == opened_before + 1


# -- writes in flight through a switchover ---------------------------------------------


WRITES_APP = "tests.support.writes:app"


def _no_500_no_silence(load: WriteLoad, service: ServiceProcess) -> None:
    statuses = load.statuses()
    assert set(statuses) <= {200, 503}, f"{statuses}\n{service.output()}"
    assert statuses[503] >= 1  # the switchover did reach the writes


def test_writes_through_a_switchover_get_a_503_never_a_500_or_nothing(ha_pair: Pair) -> None:
    old, new = ha_pair.primary, ha_pair.standby
    create_table(old.url())
    url = ha_pair.url(new, old)  # multi-host: follows the new primary by itself
    with ServiceProcess(url, app=WRITES_APP, capture_output=True) as service:
        service.start()
        with WriteLoad(service.port) as load:
            wait_until(lambda: load.statuses()[200] >= 20, "writes to flow")
            ha_pair.switchover()
            after = time.monotonic()
            wait_until(lambda: load.first_success(after) is not None, "a write on the new primary")
        _no_500_no_silence(load, service)


def test_writes_through_a_switchover_behind_one_address_resume_on_the_new_primary(
    ha_pair: Pair,
) -> None:
    """A proxy in front (HAProxy with shutdown-sessions): the old primary comes back as a
    standby behind the same address (503 read_only) until the proxy routes to the new one."""
    old, new = ha_pair.primary, ha_pair.standby
    create_table(old.url())
    with TcpProxy(old.port) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        with ServiceProcess(url, app=WRITES_APP, capture_output=True) as service:
            service.start()
            with WriteLoad(service.port) as load:
                wait_until(lambda: load.statuses()[200] >= 20, "writes to flow")
                ha_pair.switchover()  # the proxy still routes to `old`, a standby now
                wait_until(lambda: service.get(READY) == 503, "readiness to say read_only")
                proxy.switch(new.port)
                switched = time.monotonic()
                wait_until(lambda: load.first_success(switched) is not None, "a write again")
            _no_500_no_silence(load, service)


# -- read replicas ---------------------------------------------------------------------


def _replica_app(pair: Pair, on_connect: Any = None, **overrides: Any) -> Starlette:
    replica = DatabaseURL.parse(pair.standby.url())
    overrides.setdefault("replica_max_lag", 1.0)  # measured every 0.25 s
    return _app(pair.primary.url(), on_connect, replica_url=replica, **overrides)


async def _until_replica(app: Starlette, word: str) -> None:
    await wait_until_async(
        lambda: _reads(app).word() == word, f"the replica to be {word}", interval=0.02
    )


async def _metric(client: httpx.AsyncClient, sample: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {sample} in /metrics")


async def test_a_replica_read_runs_on_the_standby(ha_pair: Pair) -> None:
    set_up: set[int] = set()  # the ports on_connect ran on: primary and replica alike

    async def on_connect(con: Any) -> None:
        set_up.add(await con.fetchval("SELECT inet_server_port()"))

    app = _replica_app(ha_pair, on_connect=on_connect)
    async with running(app) as client:
        await started(app)
        await _until_replica(app, "connected")
        assert set_up == {ha_pair.primary.port, ha_pair.standby.port}
        replica = await client.get("/server?replica=1")
        assert replica.json() == {"port": ha_pair.standby.port, "recovery": True}
        primary = await client.get("/server")
        assert primary.json() == {"port": ha_pair.primary.port, "recovery": False}
        assert await _ready(client) == (
            200,
            {
                "ready": True,
                "dependencies": {"db": "connected", "db_replica": "connected", "redis": "unknown"},
            },
        )
        assert _reads(app).fallbacks() == {
            "lag": 0,
            "not_configured": 0,
            "unavailable": 0,
        }
        assert await _metric(client, "db_replica_up") == 1


async def test_each_pool_counts_only_its_own_connections(ha_pair: Pair) -> None:
    """Three replica reads held 0.6 s each: the replica's held histogram has them, the
    primary's has none (its own leases, readiness and lag probes, take milliseconds)."""
    app = _replica_app(ha_pair)

    async def held(client: httpx.AsyncClient, prefix: str) -> float:
        above = await _metric(client, f'{prefix}_pool_held_seconds_bucket{{le="1.0"}}')
        below = await _metric(client, f'{prefix}_pool_held_seconds_bucket{{le="0.5"}}')
        return above - below

    async with running(app) as client:
        await started(app)
        await _until_replica(app, "connected")
        reads = _reads(app)

        async def read_slowly() -> None:
            async with reads.connection() as con:
                assert await con.fetchval("SELECT pg_is_in_recovery()") is True
                await asyncio.sleep(0.6)

        await asyncio.gather(read_slowly(), read_slowly(), read_slowly())
        assert await held(client, "db_replica") == 3
        assert await held(client, "db") == 0
        assert await _metric(client, "db_replica_pool_size") >= 3
        assert reads.fallbacks() == {"lag": 0, "not_configured": 0, "unavailable": 0}


async def test_a_stopped_replica_sends_reads_to_the_primary_and_is_counted(
    ha_pair: Pair,
) -> None:
    app = _replica_app(ha_pair)
    async with running(app) as client:
        await started(app)
        await _until_replica(app, "connected")
        await asyncio.to_thread(ha_pair.standby.stop)
        try:
            response = await client.get("/server?replica=1")
            assert response.json() == {"port": ha_pair.primary.port, "recovery": False}
            assert _reads(app).fallbacks()["unavailable"] == 1
            await _until_replica(app, "disconnected")
            status, body = await _ready(client)
            assert (status, body["dependencies"]["db_replica"]) == (200, "disconnected")
            sample = 'db_replica_fallbacks_total{reason="unavailable"}'
            assert await _metric(client, sample) == 1
            assert await _metric(client, "db_replica_up") == 0
        finally:
            await asyncio.to_thread(ha_pair.standby.start)
        await _until_replica(app, "connected")  # back by itself
        response = await client.get("/server?replica=1")
        assert response.json() == {"port": ha_pair.standby.port, "recovery": True}
    await asyncio.to_thread(ha_pair.primary.wait_streaming_to, ha_pair.standby)


async def test_a_lagging_replica_sends_reads_to_the_primary(ha_pair: Pair) -> None:
    app = _replica_app(ha_pair, replica_max_lag=0.3)
    async with running(app) as client:
        await started(app)
        await _until_replica(app, "connected")
        await asyncio.to_thread(ha_pair.standby.query, "SELECT pg_wal_replay_pause()")
        try:
            await asyncio.to_thread(ha_pair.primary.query, "CREATE TABLE IF NOT EXISTS lag (x int)")
            await _until_replica(app, "lagging")
            response = await client.get("/server?replica=1")
            assert response.json() == {"port": ha_pair.primary.port, "recovery": False}
            assert _reads(app).fallbacks()["lag"] == 1
            status, body = await _ready(client)
            assert (status, body["dependencies"]["db_replica"]) == (200, "lagging")
        finally:
            await asyncio.to_thread(ha_pair.standby.query, "SELECT pg_wal_replay_resume()")
        await _until_replica(app, "connected")
        response = await client.get("/server?replica=1")
        assert response.json() == {"port": ha_pair.standby.port, "recovery": True}
