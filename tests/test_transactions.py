"""run_in_transaction against real PostgreSQL: commit, rollback, isolation, retries on 40001
and 40P01 (20 concurrent serializable transfers), exhaustion as a 503, a lost COMMIT."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import TransactionOutcomeUnknown, create_app, json_response, run_in_transaction
from service.db import Database
from service.db.transactions import WriteInReadOnlyTransaction
from service.settings import Settings
from tests.support.apps import running, started, test_settings
from tests.support.cluster import free_port
from tests.support.proxy import TcpProxy

ACCOUNTS = """
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO accounts VALUES (1, 1000), (2, 1000);
"""
TRANSFERS = 20
AMOUNT = 10


def _setup(url: str, sql: str = ACCOUNTS) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(sql)


def _balances(url: str) -> list[int]:
    with psycopg.connect(url) as con:
        return [row[0] for row in con.execute("SELECT balance FROM accounts ORDER BY id")]


async def _move(con: asyncpg.Connection, amount: int) -> int:
    """A transfer that reads, then writes: under serializable, concurrent ones conflict."""
    balance = await con.fetchval("SELECT balance FROM accounts WHERE id = 1")
    await con.execute("UPDATE accounts SET balance = $1 WHERE id = 1", balance - amount)
    await con.execute("UPDATE accounts SET balance = balance + $1 WHERE id = 2", amount)
    return int(balance - amount)


def _transfer_app(settings: Settings) -> Any:
    async def transfer(request: Request) -> Response:
        left = await run_in_transaction(
            request, lambda con: _move(con, AMOUNT), isolation="serializable"
        )
        return json_response({"left": left})

    return create_app(settings, routes=[Route("/transfer", transfer, methods=["POST"])])


async def test_concurrent_serializable_transfers_conserve_money_and_are_retried(
    database_url: str,
) -> None:
    _setup(database_url)
    app = _transfer_app(test_settings(database_url, pool_max_size=TRANSFERS))
    async with running(app) as client:
        database: Database = await started(app)
        answers = await asyncio.gather(*(client.post("/transfer") for _ in range(TRANSFERS)))
        stats = database.stats()
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, [a.text for a in answers]
    committed = statuses.count(200)
    assert committed >= 1
    first, second = _balances(database_url)
    assert first + second == 2000  # money conserved
    assert first == 1000 - committed * AMOUNT  # each answered transfer applied exactly once
    assert stats.transactions["committed"] == committed
    assert stats.transactions["retries_exhausted"] == statuses.count(503)
    assert stats.transaction_retries["40001"] >= 1  # they did conflict, and were run again
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "1"
            assert answer.json() == {"error": "serialization_failure", "sqlstate": "40001"}


async def test_a_serialization_failure_past_the_retries_answers_503(database_url: str) -> None:
    _setup(database_url)
    read, written = asyncio.Event(), asyncio.Event()
    calls = 0

    async def skewed(con: asyncpg.Connection) -> None:
        nonlocal calls
        calls += 1
        await con.fetchval("SELECT balance FROM accounts WHERE id = 1")
        read.set()
        await written.wait()  # another transaction changed the row meanwhile
        await con.execute("UPDATE accounts SET balance = 0 WHERE id = 1")

    async def other(request: Request) -> Response:
        await read.wait()
        await run_in_transaction(request, lambda con: _move(con, 1), isolation="serializable")
        written.set()
        return json_response({})

    async def victim(request: Request) -> Response:
        await run_in_transaction(request, skewed, isolation="serializable")
        return json_response({})  # pragma: no cover - it cannot commit

    routes = [Route("/victim", victim, methods=["POST"]), Route("/other", other, methods=["POST"])]
    app = create_app(test_settings(database_url, transaction_retries=0), routes=routes)
    async with running(app) as client:
        database: Database = await started(app)
        failed, done = await asyncio.gather(client.post("/victim"), client.post("/other"))
    assert done.status_code == 200
    assert (failed.status_code, failed.json()) == (
        503,
        {"error": "serialization_failure", "sqlstate": "40001"},
    )
    assert failed.headers["retry-after"] == "1"
    assert calls == 1  # DB_TRANSACTION_RETRIES=0: not run again
    assert database.stats().transactions["retries_exhausted"] == 1
    assert _balances(database_url) == [999, 1001]


async def test_a_deadlock_is_run_again_and_both_commit(
    database: Database, settings: Settings
) -> None:
    _setup(settings.database_url.value or "")
    first_holds, second_waits = asyncio.Event(), asyncio.Event()
    attempts: dict[str, int] = {"first": 0, "second": 0}

    async def first(con: asyncpg.Connection) -> None:
        attempts["first"] += 1
        await con.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1")
        first_holds.set()
        await second_waits.wait()
        await asyncio.sleep(0.2)  # the second one is blocked on row 1 by now
        await con.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2")

    async def second(con: asyncpg.Connection) -> None:
        attempts["second"] += 1
        if attempts["second"] == 1:
            await first_holds.wait()
        await con.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
        second_waits.set()
        await con.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")

    await asyncio.gather(database.run_in_transaction(first), database.run_in_transaction(second))
    stats = database.stats()
    assert stats.transaction_retries["40P01"] == 1  # one was chosen as the victim, and rerun
    assert stats.transactions["committed"] == 2
    assert sum(attempts.values()) == 3
    assert _balances(settings.database_url.value or "") == [1000, 1000]


async def test_isolation_and_read_only_reach_the_server(database: Database) -> None:
    async def settings_seen(con: asyncpg.Connection) -> tuple[str, ...]:
        return tuple(
            await con.fetchrow(
                "SELECT current_setting('transaction_isolation'),"
                " current_setting('transaction_read_only'),"
                " current_setting('transaction_deferrable')"
            )
        )

    assert await database.run_in_transaction(settings_seen) == ("read committed", "off", "off")
    seen = await database.run_in_transaction(settings_seen, isolation="repeatable_read")
    assert seen == ("repeatable read", "off", "off")
    seen = await database.run_in_transaction(
        settings_seen, isolation="serializable", read_only=True
    )
    assert seen == ("serializable", "on", "on")  # deferrable: it cannot fail to serialize
    with pytest.raises(ValueError, match="isolation 'snapshot' is not one of"):
        await database.run_in_transaction(settings_seen, isolation="snapshot")  # type: ignore[arg-type]


async def test_an_error_in_fn_rolls_back_and_goes_on(
    database: Database, settings: Settings
) -> None:
    _setup(settings.database_url.value or "")

    async def broken(con: asyncpg.Connection) -> None:
        await con.execute("UPDATE accounts SET balance = 0")
        raise RuntimeError("a bug after the write")

    with pytest.raises(RuntimeError, match="a bug after the write"):
        await database.run_in_transaction(broken)
    assert _balances(settings.database_url.value or "") == [1000, 1000]
    assert database.stats().transactions["rolled_back"] == 1


async def test_a_write_in_a_read_only_transaction_is_the_handlers_bug(
    database: Database, settings: Settings
) -> None:
    _setup(settings.database_url.value or "")

    async def writes(con: asyncpg.Connection) -> None:
        await con.execute("UPDATE accounts SET balance = 0")

    with pytest.raises(WriteInReadOnlyTransaction):
        await database.run_in_transaction(writes, read_only=True)
    stats = database.stats()
    assert stats.writes_refused == 0  # not taken for a demoted server
    assert stats.state == "connected"


async def test_a_connection_lost_at_commit_is_never_retried_and_says_so(
    database_url: str,
) -> None:
    """The connection goes away between the last statement and COMMIT: the server may have
    committed or not, as far as the client can know."""
    _setup(database_url)
    with TcpProxy.before(database_url) as proxy:
        # The default sslmode (prefer): a connect that asks for TLS is cut while the proxy
        # routes nowhere (service/db/opening.py marks asyncpg's future retrieved).
        url = proxy.url(database_url)
        calls = 0

        async def cut_before_commit(con: asyncpg.Connection) -> None:
            nonlocal calls
            calls += 1
            await con.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
            proxy.switch(free_port())  # every session through the proxy is closed

        async def write(request: Request) -> Response:
            await run_in_transaction(request, cut_before_commit)
            return json_response({})  # pragma: no cover

        app = create_app(test_settings(url), routes=[Route("/write", write, methods=["POST"])])
        async with running(app) as client:
            database: Database = await started(app)
            answer = await client.post("/write")
            stats = database.stats()
    assert (answer.status_code, answer.json()) == (
        503,
        {"error": "transaction outcome unknown", "db": "disconnected"},
    )
    assert answer.headers["retry-after"] == "1"
    assert calls == 1
    assert stats.transactions["outcome_unknown"] == 1
    assert stats.broken_in_use == 1
    assert issubclass(TransactionOutcomeUnknown, Exception)
    assert _balances(database_url) == [1000, 1000]  # here, the COMMIT never reached it
