"""What every connection gets before anyone uses it: JSON codecs, UTC, and a feature's own
on_connect set-up (once per physical connection; a failing one never lends a connection)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import asyncpg
import psycopg
import pytest

from service import create_app
from service.db import Database, DbState
from service.settings import Settings
from tests.support.apps import running, started


async def test_json_values_go_in_as_python_and_come_back_as_python(database: Database) -> None:
    async with database.connection() as con:
        await con.execute("CREATE TABLE docs (id int PRIMARY KEY, b jsonb, j json, a jsonb[])")
        value = {"name": "Zoë ☃", "n": 2**70, "f": 0.5, "ok": True, "tags": [1, [2]], "none": None}
        await con.execute(
            "INSERT INTO docs VALUES (1, $1, $2, $3)", value, [1, "two"], [{"x": 1}, {"y": [2]}]
        )
        row = await con.fetchrow("SELECT b, j, a FROM docs")
        assert row is not None
        assert (row["b"], row["j"], row["a"]) == (value, [1, "two"], [{"x": 1}, {"y": [2]}])
        # A str is JSON text already written (asyncpg's own meaning), not a JSON string.
        assert await con.fetchval("SELECT $1::jsonb", '{"a": 1}') == {"a": 1}
        assert await con.fetchval("SELECT $1::jsonb", 7) == 7
        assert await con.fetchval("SELECT '\"text\"'::jsonb") == "text"
        assert await con.fetchval("SELECT 'null'::jsonb") is None
        assert await con.fetchval("SELECT '1e400'::jsonb") == 10**400  # numeric, kept whole
        assert await con.fetchval("SELECT jsonb_build_object('k', 1.5e-400::numeric)") == {"k": 0.0}


async def test_every_session_is_in_utc_whatever_the_database_says(settings: Settings) -> None:
    url = settings.database_url.value or ""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'America/New_York'")
    full = replace(settings, reset_on_release="full", pool_max_size=1)
    async with Database(full) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            assert await con.fetchval("SHOW TimeZone") == "UTC"
            await con.execute("SET TimeZone = 'Asia/Tokyo'")  # a handler's own SET ...
        async with database.connection() as con:  # ... is reset at release (full)
            assert await con.fetchval("SHOW TimeZone") == "UTC"
            noon = await con.fetchval("SELECT '2026-01-01 12:00:00+01'::timestamptz::text")
            assert noon == "2026-01-01 11:00:00+00"


async def test_on_connect_runs_once_per_connection_after_ours(settings: Settings) -> None:
    seen: list[tuple[Any, bool]] = []

    async def on_connect(con: asyncpg.Connection) -> None:
        # Our codecs are there already; no transaction is open.
        seen.append((await con.fetchval("SELECT '{\"a\": 1}'::jsonb"), con.is_in_transaction()))
        await con.execute("SET myapp.tenant = 'acme'")

    app = create_app(replace(settings, pool_min_size=2), on_connect=on_connect)
    async with running(app) as client:
        database = await started(app)
        assert (await client.get("/api/v1/ready")).status_code == 200
        for _ in range(5):
            async with database.connection() as con:
                # DB_RESET_ON_RELEASE=rollback: what it SET lasts the connection's life.
                assert await con.fetchval("SELECT current_setting('myapp.tenant')") == "acme"
        opened = database.stats().opened
    assert seen == [({"a": 1}, False)] * opened
    assert opened >= 2


@pytest.mark.parametrize(
    ("hook_error", "logged"),
    [
        (ValueError("the tenant table is missing"), "ValueError: the tenant table is missing"),
        (None, "UndefinedObjectError: unrecognized configuration parameter"),
    ],
)
async def test_a_failing_on_connect_closes_the_connection_and_shows_in_readiness(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    hook_error: Exception | None,
    logged: str,
) -> None:
    caplog.set_level(logging.INFO, logger="service.db")
    calls = 0

    async def on_connect(con: asyncpg.Connection) -> None:
        nonlocal calls
        calls += 1
        if hook_error is not None:
            raise hook_error
        await con.execute("SET no_such_parameter = 1")  # the server refuses it

    app = create_app(settings, on_connect=on_connect)
    async with running(app) as client:
        database: Database = app.state.lifespan_state["db"]
        await database.wait_connected(1)
        for _ in range(3):
            answer = await client.get("/api/v1/ready")
            assert (answer.status_code, answer.json()["dependencies"]["db"]) == (503, "error")
        assert database.state == DbState.ERROR
        assert database.stats().size == 0
    failures = [r.getMessage() for r in caplog.records if "on_connect_failed" in r.getMessage()]
    assert len(failures) == 1  # once, not at every attempt
    assert failures[0].startswith(f"db.on_connect_failed {logged}")
    assert calls >= 1
    url = settings.database_url.value or ""
    with psycopg.connect(url) as con:
        left = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'service'"
            " AND datname = current_database()"  # not another test's, on a shared server
        ).fetchone()
    assert left == (0,)  # every connection the hook failed on was closed
