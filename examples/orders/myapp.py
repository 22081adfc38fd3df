from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import create_app, db_connection, json_response, read_json, run_in_transaction

COLUMNS = "id, reference, total, details, created_at"


class OrderIn(msgspec.Struct, forbid_unknown_fields=True):
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # idempotency key
    total: Annotated[int, msgspec.Meta(ge=0)]  # in cents
    details: dict[str, Any] = {}


async def create_order(request: Request) -> Response:
    order = await read_json(request, OrderIn)  # 413, 415, 400 or 422 if it is not one

    async def insert(con):  # may run again after a serialization failure: no side effects
        return await con.fetchrow(
            f"INSERT INTO orders (reference, total, details) VALUES ($1, $2, $3)"
            f" RETURNING {COLUMNS}",
            order.reference,
            order.total,
            order.details,  # a dict: the jsonb codec encodes it
        )

    row = await run_in_transaction(request, insert)  # a duplicate reference: 409
    return json_response(row, status_code=201)


async def get_order(request: Request) -> Response:
    async with db_connection(request) as con:  # bounded wait, always released
        row = await con.fetchrow(
            f"SELECT {COLUMNS} FROM orders WHERE id = $1", request.path_params["id"]
        )
    if row is None:
        return json_response({"error": "no such order"}, status_code=404)
    return json_response(row)  # a Record: an object keyed by column


def app():
    return create_app(
        routes=[
            Route("/api/v1/orders", create_order, methods=["POST"]),
            Route("/api/v1/orders/{id:int}", get_order, methods=["GET"]),
        ]
    )
