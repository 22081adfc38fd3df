"""Bodies in and out: read_json's bounds and answers (413, 415, 400, 422), json_response's
types; the size bound on a real server, where a body too large is never read."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

import httpx
import msgspec
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import create_app, db_connection, json_response, read_json
from service.settings import Settings
from tests.support.apps import running, started, test_settings
from tests.support.process import ServiceProcess, read_response

LIMIT = 1024


class Payment(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=10)]
    amount: Annotated[int, msgspec.Meta(ge=1)]
    tags: list[str] = []


async def _typed(request: Request) -> Response:
    payment = await read_json(request, Payment)
    return json_response({"name": payment.name, "amount": payment.amount, "tags": payment.tags})


async def _any(request: Request) -> Response:
    return json_response({"got": await read_json(request)})


async def _row(request: Request) -> Response:
    async with db_connection(request) as con:
        rows = await con.fetch(
            "SELECT 1::bigint AS id, 'Zoë'::text AS name,"
            " '2026-11-28 12:00:00.5+02'::timestamptz AS at, '2026-11-28'::date AS day,"
            " 12.30::numeric(10, 2) AS amount,"
            " 'c4ca4238-a0b9-2382-0dcc-509a6f75849b'::uuid AS uid,"
            " '{\"k\": [1, 2]}'::jsonb AS doc, NULL::text AS nothing"
            " FROM generate_series(1, 2)"
        )
    return json_response(rows[0] if request.query_params.get("one") else rows)


@pytest.fixture
async def client(settings: Settings) -> Any:
    app = create_app(
        test_settings(settings.database_url.value, max_body_bytes=LIMIT),
        routes=[
            Route("/typed", _typed, methods=["POST"]),
            Route("/any", _any, methods=["POST"]),
            Route("/row", _row),
        ],
    )
    async with running(app) as client:
        await started(app)
        yield client


async def test_a_valid_body_is_decoded_into_the_model(client: httpx.AsyncClient) -> None:
    answer = await client.post("/typed", json={"name": "rent", "amount": 12})
    assert answer.json() == {"name": "rent", "amount": 12, "tags": []}
    free = await client.post("/any", json=[1, {"a": None}])
    assert free.json() == {"got": [1, {"a": None}]}
    typed = await client.post(
        "/any", content=b'{"x": 1}', headers={"content-type": "application/merge-patch+json"}
    )
    assert typed.json() == {"got": {"x": 1}}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"amount": 1}, "name", "Object missing required field `name`"),
        ({"name": "x", "amount": "1"}, "amount", "Expected `int`, got `str`"),
        ({"name": "x", "amount": 0}, "amount", "Expected `int` >= 1"),
        ({"name": "much too long", "amount": 1}, "name", "Expected `str` of length <= 10"),
        ({"name": "x", "amount": 1, "extra": 2}, "extra", "Object contains unknown field `extra`"),
        ({"name": "x", "amount": 1, "tags": ["a", 2]}, "tags[1]", "Expected `str`, got `int`"),
        ([1, 2], "", "Expected `object`, got `array`"),
    ],
)
async def test_a_body_that_does_not_fit_answers_422_naming_the_field(
    client: httpx.AsyncClient, body: Any, field: str, message: str
) -> None:
    answer = await client.post("/typed", json=body)
    assert (answer.status_code, answer.json()) == (
        422,
        {"error": "invalid body", "fields": [{"field": field, "message": message}]},
    )


@pytest.mark.parametrize(
    ("content", "content_type", "status", "error"),
    [
        (b'{"name": ', "application/json", 400, "malformed JSON"),
        (b"", "application/json", 400, "malformed JSON"),
        (b'{"n": NaN}', "application/json", 400, "malformed JSON"),
        (b"name=x", "application/x-www-form-urlencoded", 415, "expected application/json"),
        (b'{"name": "x"}', "", 415, "expected application/json"),
        (b"x" * (LIMIT + 1), "application/json", 413, "body too large"),
    ],
)
async def test_what_a_client_can_send_wrong_is_a_4xx(
    client: httpx.AsyncClient, content: bytes, content_type: str, status: int, error: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = await client.post("/any", content=content, headers=headers)
    assert (answer.status_code, answer.json()) == (status, {"error": error})


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def chunks() -> Any:
        nonlocal sent
        for _ in range(100):  # 100 KiB offered, no Content-Length
            sent += 1
            yield b" " * 1024

    answer = await client.post(
        "/any", content=chunks(), headers={"content-type": "application/json"}
    )
    assert (answer.status_code, answer.json()) == (413, {"error": "body too large"})
    assert sent < 100  # it stopped reading


async def test_json_response_writes_records_and_the_types_they_hold(
    client: httpx.AsyncClient,
) -> None:
    row = {
        "id": 1,
        "name": "Zoë",
        "at": "2026-11-28T10:00:00.500000Z",  # UTC, with a T and an offset
        "day": "2026-11-28",
        "amount": "12.30",  # a Decimal as a string: no precision lost
        "uid": "c4ca4238-a0b9-2382-0dcc-509a6f75849b",
        "doc": {"k": [1, 2]},
        "nothing": None,
    }
    assert (await client.get("/row", params={"one": 1})).json() == row
    assert (await client.get("/row")).json() == [row, row]


def test_json_response_without_a_database() -> None:
    body = json_response(
        {
            "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "day": date(2026, 1, 2),
            "price": Decimal("0.10"),
            "id": uuid.UUID(int=1),
        },
        status_code=201,
        headers={"X-Request": "1"},
    )
    assert body.status_code == 201
    assert body.headers["x-request"] == "1"
    assert body.media_type == "application/json"
    assert body.body == (
        b'{"when":"2026-01-02T03:04:05Z","day":"2026-01-02","price":"0.10",'
        b'"id":"00000000-0000-0000-0000-000000000001"}'
    )
    with pytest.raises(TypeError, match="cannot write a object"):
        json_response(object())


def test_a_declared_body_too_large_is_refused_before_it_is_sent(database_url: str) -> None:
    with ServiceProcess(
        database_url, app="tests.support.writes:app", HTTP_MAX_BODY_BYTES=str(LIMIT)
    ) as service:
        service.start()
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
            # The head only: the 2 MiB it announces are never sent, and need not be.
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2097152\r\n\r\n"
            )
            answer = read_response(sock.makefile("rb"))
    assert answer == (413, b'{"error":"body too large"}')
