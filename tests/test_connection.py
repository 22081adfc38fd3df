"""One connection's concerns, on real connections: which errors mean it is gone, the socket
check at acquire, and the asyncpg internals they rely on (named, so an upgrade fails here)."""

from __future__ import annotations

import asyncpg
import pytest

from service.db import Database, DbState
from service.db.connection import Connection, behind, classify, connection_gone, discard


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
