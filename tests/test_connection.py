"""One connection's concerns, on real connections: which errors mean it is gone, the socket
check at acquire, keepalives and the user timeout on its socket, and the asyncpg internals
they rely on (named, so an upgrade fails here)."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
from typing import Any

import asyncpg
import asyncpg.connect_utils
import pytest
import uvloop

from service.database_url import SocketOptions
from service.db import Database, DbState
from service.db.connection import (
    Connection,
    behind,
    classify,
    connection_gone,
    discard,
    tcp_options,
)
from service.migrations import Target
from service.migrations.connection import connect
from service.settings import Settings
from tests.support.apps import test_settings

# (level, option) of each socket option read back, in SocketOptions' order.
READ_BACK = {
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "TCP_KEEPIDLE": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    "TCP_KEEPINTVL": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    "TCP_KEEPCNT": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    "TCP_USER_TIMEOUT": (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
}
DEFAULTS = {
    "SO_KEEPALIVE": 1,
    "TCP_KEEPIDLE": 30,
    "TCP_KEEPINTVL": 10,
    "TCP_KEEPCNT": 3,
    "TCP_USER_TIMEOUT": 10_000,
}


def read_back(sock: Any) -> dict[str, int]:
    return {name: sock.getsockopt(*where) for name, where in READ_BACK.items()}


async def pooled_socket_options(settings: Settings) -> dict[str, int]:
    async with Database(settings) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            raw = behind(con)
            return read_back(raw._transport.get_extra_info("socket"))  # type: ignore[union-attr]


async def test_the_asyncpg_internals_we_rely_on_are_there(database: Database) -> None:
    async with database.connection() as con:
        raw = behind(con)  # PoolConnectionProxy._con
        assert isinstance(raw, Connection)
        transport = raw._transport  # type: ignore[attr-defined]
        assert isinstance(transport.get_extra_info("socket").fileno(), int)
        assert raw.server_went_away() is False  # an idle, healthy connection
    assert behind(con) is None  # released: the proxy is detached


@pytest.mark.parametrize(
    ("error", "gone"),
    [
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle"), True),
        (asyncpg.CannotConnectNowError("the database system is shutting down"), True),
        (asyncpg.InternalClientError("cannot switch to state 12"), True),
        (ConnectionResetError(), True),
        (asyncpg.DataError("invalid input for query argument $1"), False),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (ValueError("a handler's own bug"), False),
    ],
)
async def test_which_errors_mean_the_connection_is_gone(
    database: Database, error: BaseException, gone: bool
) -> None:
    async with database.connection() as con:
        assert connection_gone(error, con) is gone


async def test_any_driver_error_after_which_the_connection_closed_means_gone(
    database: Database,
) -> None:
    async with database.connection() as con:
        discard(con)  # as if the server had ended it
        assert connection_gone(asyncpg.PostgresError("whatever it said"), con) is True
        discard(con)  # twice: nothing left to close, and no error
    assert behind(con) is None


def test_every_gone_error_reads_disconnected() -> None:
    for error in (asyncpg.InternalClientError("x"), asyncpg.IdleSessionTimeoutError("x")):
        assert classify(error) == DbState.DISCONNECTED


# -- keepalives and the user timeout (asyncpg itself sets only TCP_NODELAY) -------------


async def test_every_pooled_connection_has_keepalives_and_a_user_timeout(
    settings: Settings,
) -> None:
    assert await pooled_socket_options(settings) == DEFAULTS


async def test_the_url_s_tcp_parameters_reach_the_socket(database_url: str) -> None:
    query = "keepalives_idle=7&keepalives_interval=2&keepalives_count=4&tcp_user_timeout=1500"
    url = f"{database_url}?{query}"
    assert await pooled_socket_options(test_settings(url)) == {
        "SO_KEEPALIVE": 1,
        "TCP_KEEPIDLE": 7,
        "TCP_KEEPINTVL": 2,
        "TCP_KEEPCNT": 4,
        "TCP_USER_TIMEOUT": 1500,
    }
    off = await pooled_socket_options(test_settings(f"{database_url}?keepalives=0"))
    assert (off["SO_KEEPALIVE"], off["TCP_USER_TIMEOUT"]) == (0, 10_000)


def test_under_uvloop_too(settings: Settings) -> None:
    """`python -m service serve` runs uvloop, whose transport gives a stand-in socket."""
    assert uvloop.run(pooled_socket_options(settings)) == DEFAULTS


def test_zero_leaves_the_system_default_as_in_libpq() -> None:
    options = tcp_options(SocketOptions(idle=0, interval=0, count=0, user_timeout_ms=0))
    assert options == ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),)
    assert tcp_options(SocketOptions(keepalives=False, user_timeout_ms=0)) == (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0),
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", DEFAULTS),
        (
            "?keepalives_idle=7&tcp_user_timeout=1500",
            {**DEFAULTS, "TCP_KEEPIDLE": 7, "TCP_USER_TIMEOUT": 1500},
        ),
    ],
)
def test_the_migrate_command_s_connection_too(
    database_url: str, query: str, expected: dict[str, int]
) -> None:
    with connect(Target.parse(database_url + query)) as con:
        sock = socket.socket(fileno=socket.dup(con.pgconn.socket))
        try:
            assert read_back(sock) == expected
        finally:
            sock.close()


async def test_a_connection_cut_while_asking_for_tls_leaves_no_unretrieved_future() -> None:
    # asyncpg's TLS request protocol, as a connect cut during the negotiation leaves it:
    # the connection lost with nobody awaiting the server's answer.
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        protocol = asyncpg.connect_utils.TLSUpgradeProto(
            loop, "127.0.0.1", 5432, ssl.create_default_context(), False
        )
        protocol.connection_lost(None)
        del protocol
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert reported == []
