"""Connections that die silently: packets dropped without a trace (tests/support/blackhole.py,
nftables on a cluster's port), as after a failover, a NAT's idle drop or a vanished VM; and
a service frozen while its handler holds a row lock.

Each test owns its cluster. The URLs shorten keepalives and the user timeout, as an operator
may; the defaults are the same mechanism with longer figures (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import create_app, db_connection
from service.migrations import Target
from service.migrations.connection import connect
from service.settings import Settings
from tests.support.apps import running, started, test_settings
from tests.support.blackhole import black_hole
from tests.support.cluster import Cluster
from tests.support.polling import wait_until, wait_until_async
from tests.support.process import ServiceProcess
from tests.support.writes import create_table

pytestmark = pytest.mark.fault
needs_black_holes = pytest.mark.usefixtures("black_holes")

DISCONNECTED = {"error": "database unavailable", "db": "disconnected"}
# Idle connections: probes after 1 s of silence, 1 s apart, the connection dropped at the
# first unanswered one (the user timeout also bounds the probes).
QUICK_KEEPALIVES = (
    "keepalives_idle=1&keepalives_interval=1&keepalives_count=1&tcp_user_timeout=1000"
)


def _pid_app(settings: Settings) -> Starlette:
    async def pid(request: Request) -> JSONResponse:
        async with db_connection(request) as con:
            return JSONResponse({"pid": await con.fetchval("SELECT pg_backend_pid()")})

    return create_app(settings, routes=[Route("/pid", pid)])


def _service_pids(cluster: Cluster) -> set[int]:
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'service'"
        ).fetchall()
    return {int(row[0]) for row in rows}


@needs_black_holes
async def test_idle_connections_that_went_dark_are_replaced_before_they_are_lent(
    owned_cluster: Cluster,
) -> None:
    url = f"{owned_cluster.url()}?{QUICK_KEEPALIVES}"
    app = _pid_app(test_settings(url, pool_min_size=3))
    async with running(app) as client:
        database = await started(app)
        before = await asyncio.to_thread(_service_pids, owned_cluster)
        assert len(before) >= 3
        # The flows open now are forgotten (a NAT's idle drop); new connections work.
        with black_hole(owned_cluster.port, existing_only=True) as held:
            assert held is not None and len(held) >= 3

            # Without keepalives the kernel never learns: they stay established, and the
            # next request's query goes into the hole.
            def dropped() -> bool:
                return database.stats().lost >= len(held)

            await wait_until_async(dropped, "the kernel to drop the dark connections")
            response = await client.get("/pid")
        assert response.status_code == 200
        assert response.json()["pid"] not in before  # a new connection, not a dark one
        assert database.stats().broken_in_use == 0


@needs_black_holes
async def test_a_query_sent_into_the_dark_answers_503_within_the_user_timeout(
    owned_cluster: Cluster,
) -> None:
    # Keepalives at their 30 s default: only the user timeout (unacknowledged data) acts.
    url = f"{owned_cluster.url()}?tcp_user_timeout=1500"
    # DB_COMMAND_TIMEOUT above the wait below: without the user timeout, no answer in time.
    app = _pid_app(test_settings(url, pool_min_size=1, pool_max_size=2, command_timeout=120))
    async with running(app) as client:
        database = await started(app)
        before = (await client.get("/pid")).json()["pid"]
        with black_hole(owned_cluster.port, existing_only=True):
            response = await asyncio.wait_for(client.get("/pid"), 30)
        assert (response.status_code, response.json()) == (503, DISCONNECTED)
        assert database.stats().broken_in_use == 1
        after = await client.get("/pid")
        assert after.status_code == 200
        assert after.json()["pid"] != before  # the dark connection was replaced


def _local_port(con: psycopg.Connection[Any]) -> int:
    sock = socket.socket(fileno=socket.dup(con.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


@needs_black_holes
async def test_the_migrate_command_s_query_into_the_dark_fails_instead_of_hanging(
    owned_cluster: Cluster,
) -> None:
    """With the defaults (no TCP parameter in the URL): libpq's own leave the query waiting
    for about 15 minutes of retransmissions."""
    con = await asyncio.to_thread(connect, Target.parse(owned_cluster.url()))
    try:
        with black_hole(owned_cluster.port, client_port=_local_port(con)):
            query = asyncio.to_thread(con.execute, "SELECT 1")
            with pytest.raises(psycopg.OperationalError):
                await asyncio.wait_for(query, 40)
        assert con.closed
    finally:
        con.close()


# -- a frozen service holding a row lock: DB_IDLE_IN_TRANSACTION_TIMEOUT -----------------


def _idle_in_transaction(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'service' AND state = 'idle in transaction'"
        ).fetchone()
    return int(row[0]) if row else 0


def _update_the_row(url: str) -> int:
    """Another session's UPDATE of the locked row; cancelled after 30 s (far past the
    service's timeout), so a lock that is never released fails the test, not hangs it."""
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SET statement_timeout = '30s'")
        return other.execute("UPDATE fault_writes SET at = now() WHERE id = 1").rowcount


def test_a_frozen_service_loses_its_row_lock_after_the_idle_in_transaction_timeout(
    owned_cluster: Cluster,
) -> None:
    url = owned_cluster.url()
    create_table(url)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("INSERT INTO fault_writes DEFAULT VALUES")
    env = {"DB_IDLE_IN_TRANSACTION_TIMEOUT": "1"}
    with ServiceProcess(url, app="tests.support.writes:app", **env) as service:
        service.start()
        assert service.process is not None
        held = socket.create_connection(("127.0.0.1", service.port), timeout=30)
        # The handler locks the row, then awaits something else for 3 s.
        request = b"POST /lock/1?hold=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        held.sendall(request)
        wait_until(lambda: _idle_in_transaction(url) == 1, "the handler to hold the row lock")
        os.kill(service.process.pid, signal.SIGSTOP)  # frozen: it can neither commit nor close
        try:
            updated = _update_the_row(url)
        finally:
            os.kill(service.process.pid, signal.SIGCONT)
        assert updated == 1
        # Resumed, the handler finds its transaction gone: a 503, never a 500 or a commit.
        with held, held.makefile("rb") as answer:
            status_line = answer.readline()
            body = answer.read().rpartition(b"\r\n\r\n")[2]
        assert status_line.startswith(b"HTTP/1.1 503 "), status_line
        assert b'"db":"disconnected"' in body
        assert service.get("/api/v1/ready") == 200
