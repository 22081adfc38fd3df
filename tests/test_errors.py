"""Database errors as answers (web/errors.py's table), against real PostgreSQL: the status,
the error's class and constraint in the body, and never the offending value."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import create_app, db_connection, json_response
from service.settings import Settings
from tests.support.apps import running, started

SECRET = "alice@example.com"  # user data: it must never appear in an answer
SCHEMA = """
CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text NOT NULL CONSTRAINT users_email_key UNIQUE,
    age int CONSTRAINT users_age_check CHECK (age >= 0)
);
CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users);
CREATE TABLE rooms (id bigint PRIMARY KEY, booked int4range NOT NULL,
    CONSTRAINT rooms_no_overlap EXCLUDE USING gist (booked WITH &&));
CREATE TABLE docs (id bigint PRIMARY KEY, body jsonb NOT NULL);
INSERT INTO users VALUES (1, 'alice@example.com', 30);
INSERT INTO rooms VALUES (1, '[1,10)');
"""
STATEMENTS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "unique": ("INSERT INTO users (id, email) VALUES (2, $1)", (SECRET,)),
    "foreign_key": ("INSERT INTO posts VALUES (1, $1)", (424242,)),
    "exclusion": ("INSERT INTO rooms VALUES (2, int4range($1, $2))", (5, 15)),
    "not_null": ("INSERT INTO users (id, email) VALUES (3, $1)", (None,)),
    "check": ("INSERT INTO users VALUES (4, $1, $2)", ("bob@example.com", -7)),
    "bad_text": ("SELECT $1::text::int", ("not-a-number-424242",)),
    "out_of_range": ("SELECT $1::int * 1000000000", (424242,)),
    "nul_in_jsonb": ("INSERT INTO docs VALUES (1, $1)", ({"note": "a\u0000b"},)),
    "bigint_overflow": ("SELECT $1::bigint", (9223372036854775808,)),
    "dict_for_text": ("SELECT $1::text", ({"email": SECRET},)),
    "undefined_table": ("SELECT * FROM no_such_table", ()),
}
# case: (status, error, SQLSTATE, what else the body names)
TABLE: dict[str, tuple[int, str, str, dict[str, str]]] = {
    "unique": (409, "unique_violation", "23505", {"constraint": "users_email_key"}),
    "foreign_key": (409, "foreign_key_violation", "23503", {"constraint": "posts_user_id_fkey"}),
    "exclusion": (409, "exclusion_violation", "23P01", {"constraint": "rooms_no_overlap"}),
    "not_null": (422, "not_null_violation", "23502", {"column": "email"}),
    "check": (422, "check_violation", "23514", {"constraint": "users_age_check"}),
    "bad_text": (400, "invalid_text_representation", "22P02", {}),
    "out_of_range": (400, "numeric_value_out_of_range", "22003", {}),
    "nul_in_jsonb": (400, "untranslatable_character", "22P05", {}),
    "bigint_overflow": (400, "data_exception", "22000", {}),
    "dict_for_text": (400, "data_exception", "22000", {}),
}
EXPECTED: dict[str, tuple[int, dict[str, str]]] = {
    case: (status, {"error": error, "sqlstate": state, **extra})
    for case, (status, error, state, extra) in TABLE.items()
}
EXPECTED["undefined_table"] = (500, {"error": "internal server error"})


async def _run(request: Request) -> Response:
    sql, args = STATEMENTS[request.path_params["case"]]
    async with db_connection(request) as con:
        await con.execute(sql, *args)
    return json_response({})  # pragma: no cover - every case fails


async def _caught(request: Request) -> Response:
    try:
        async with db_connection(request) as con:
            await con.execute(*STATEMENTS["unique"][0:1], *STATEMENTS["unique"][1])
    except asyncpg.UniqueViolationError:
        return json_response({"error": "that email is taken"}, status_code=409)
    return json_response({})  # pragma: no cover


@pytest.fixture
async def client(settings: Settings) -> Any:
    with psycopg.connect(settings.database_url.value or "", autocommit=True) as con:
        con.execute(SCHEMA)
    app = create_app(
        settings, routes=[Route("/run/{case}", _run, methods=["POST"]), Route("/caught", _caught)]
    )
    async with running(app) as client:
        await started(app)
        yield client


@pytest.mark.parametrize("case", sorted(EXPECTED))
async def test_each_sqlstate_class_answers_by_the_table(
    client: httpx.AsyncClient, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="service.app")
    answer = await client.post(f"/run/{case}")
    assert (answer.status_code, answer.json()) == EXPECTED[case]
    for value in (SECRET, "424242", "-7"):
        assert value not in answer.text
    logged = [r for r in caplog.records if r.name == "service.app"]
    if answer.status_code == 500:  # the traceback goes to the log, never to the client
        assert logged and logged[0].exc_info is not None
        assert "http.unhandled_error method=POST route=/run/{case}" in logged[0].getMessage()
    else:
        assert not logged


async def test_a_handler_can_catch_and_answer_first(client: httpx.AsyncClient) -> None:
    answer = await client.get("/caught")
    assert (answer.status_code, answer.json()) == (409, {"error": "that email is taken"})


async def test_the_connection_goes_back_to_the_pool_after_each(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    for case in EXPECTED:
        await client.post(f"/run/{case}")
    with psycopg.connect(settings.database_url.value or "") as con:
        row = con.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'service'"
            " AND state = 'idle in transaction' AND datname = current_database()"
        ).fetchone()
    assert row == (0,)
