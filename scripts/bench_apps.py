"""The apps `scripts/bench` compares: a one-row read (`SELECT id, v FROM t WHERE id = $1`),
a write (a POST that inserts a row with a jsonb value and answers it), and the ceiling.

- `project` / `project_write`: this service, the route added as a feature through
  `create_app(routes=...)`; the write uses read_json + run_in_transaction + json_response.
- `lean` / `lean_write`: the leanest Starlette + asyncpg app: a bare `pool.acquire()`, no
  middleware; the write parses, checks and encodes by hand, in a transaction.
- `sqlalchemy` / `sqlalchemy_write`: the original design: FastAPI + SQLAlchemy's async
  engine and a session per request from a `get_db` dependency (pool 20 + overflow 10,
  pre-ping, hourly recycle); the write validates with a pydantic model.
- `bare`: Starlette, one route, no database, no middleware: the HTTP ceiling.

Each is a uvicorn factory (`uvicorn bench_apps:lean --factory`) reading DATABASE_URL, served
with the same flags as `python -m service serve`. Not part of the service; `pip install
-e '.[bench]'` for FastAPI and SQLAlchemy (scripts/bench does).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import create_app, db_connection, json_response, read_json, run_in_transaction

READ = "SELECT id, v FROM t WHERE id = $1"
ROWS = 10_000
PATH = "/item/{item_id:int}"
SETUP = f"""
DROP TABLE IF EXISTS t;
CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, {ROWS}) AS i;
ANALYZE t;
DROP TABLE IF EXISTS w;
CREATE TABLE w (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
WRITE_PATH = "/items"
WRITE = "INSERT INTO w (name, payload) VALUES ($1, $2) RETURNING id, name, payload, created_at"
WRITE_BODY = b'{"name": "widget", "payload": {"colour": "blue", "sizes": [1, 2, 3], "ok": true}}'
BARE_BODY = b'{"status":"ok"}'


async def _item(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        row = await con.fetchrow(READ, request.path_params["item_id"])
    if row is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse({"id": row["id"], "v": row["v"]})


def project() -> Starlette:
    """This service with one feature route, as a user adds it."""
    return create_app(routes=[Route(PATH, _item, methods=["GET"])])


@asynccontextmanager
async def _lean_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=30)
    yield {"pool": pool}
    await pool.close()


async def _lean_item(request: Request) -> JSONResponse:
    async with request.state.pool.acquire() as con:
        row = await con.fetchrow(READ, request.path_params["item_id"])
    if row is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse({"id": row["id"], "v": row["v"]})


def lean() -> Starlette:
    """Starlette + a bare asyncpg pool: the floor the project is measured against."""
    return Starlette(routes=[Route(PATH, _lean_item, methods=["GET"])], lifespan=_lean_lifespan)


class ItemIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    payload: dict[str, Any]


async def _create(request: Request) -> Response:
    item = await read_json(request, ItemIn)

    async def insert(con: Any) -> Any:
        return await con.fetchrow(WRITE, item.name, item.payload)

    return json_response(await run_in_transaction(request, insert), status_code=201)


def project_write() -> Starlette:
    """This service with one write route: read_json, run_in_transaction, json_response."""
    return create_app(
        routes=[Route(WRITE_PATH, _create, methods=["POST"]), Route(PATH, _item, methods=["GET"])]
    )


def lean_write() -> Starlette:
    """Starlette + a bare asyncpg pool, the same write by hand (parse, check, encode)."""

    async def create(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "malformed JSON"}, status_code=400)
        name, payload = body.get("name"), body.get("payload")
        if not isinstance(name, str) or not 0 < len(name) <= 100 or not isinstance(payload, dict):
            return JSONResponse({"error": "invalid body"}, status_code=422)
        async with request.state.pool.acquire() as con:
            async with con.transaction():
                row = await con.fetchrow(WRITE, name, json.dumps(payload))
        return JSONResponse(
            {
                "id": row["id"],
                "name": row["name"],
                "payload": json.loads(row["payload"]),
                "created_at": row["created_at"].isoformat(),
            },
            status_code=201,
        )

    routes = [Route(WRITE_PATH, create, methods=["POST"]), Route(PATH, _lean_item, methods=["GET"])]
    return Starlette(routes=routes, lifespan=_lean_lifespan)


def bare() -> Starlette:
    """Starlette without a database or a middleware: what HTTP alone costs (the ceiling)."""

    async def ok(request: Request) -> Response:
        return Response(BARE_BODY, media_type="application/json")

    return Starlette(routes=[Route("/ok", ok, methods=["GET"])])


def _sqlalchemy() -> tuple[Any, Any]:
    """FastAPI and an async engine as the original design set them up, with the read route
    (/item/{id}, also the bench's "up" probe): the app, and its session dependency."""
    from fastapi import Depends, FastAPI, HTTPException
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(
        url, pool_size=20, max_overflow=10, pool_pre_ping=True, pool_recycle=3600
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    query = text("SELECT id, v FROM t WHERE id = :id")

    async def get_db() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/item/{item_id}")
    async def item(item_id: int, db: AsyncSession = Depends(get_db)) -> dict[str, Any]:  # noqa: B008
        row = (await db.execute(query, {"id": item_id})).one_or_none()
        if row is None:
            raise HTTPException(status_code=404)
        return {"id": row.id, "v": row.v}

    return app, get_db


def sqlalchemy() -> Any:
    """The original design: FastAPI, SQLAlchemy async engine, a session per request."""
    return _sqlalchemy()[0]


def sqlalchemy_write() -> Any:
    """The original design's write: a pydantic model, a session, a commit."""
    from datetime import datetime

    from fastapi import Depends
    from pydantic import BaseModel, Field
    from sqlalchemy import bindparam, text
    from sqlalchemy.dialects.postgresql import JSONB
    from sqlalchemy.ext.asyncio import AsyncSession

    app, get_db = _sqlalchemy()
    insert = text(
        "INSERT INTO w (name, payload) VALUES (:name, :payload)"
        " RETURNING id, name, payload, created_at"
    ).bindparams(bindparam("payload", type_=JSONB))

    class Item(BaseModel):
        name: str = Field(min_length=1, max_length=100)
        payload: dict[str, Any]

    class ItemOut(Item):
        id: int
        created_at: datetime

    async def create(item: Item, db: AsyncSession = Depends(get_db)) -> ItemOut:  # noqa: B008
        row = (await db.execute(insert, {"name": item.name, "payload": item.payload})).one()
        await db.commit()
        return ItemOut(id=row.id, name=row.name, payload=row.payload, created_at=row.created_at)

    # The models are local (FastAPI is imported here only): give FastAPI the classes, not
    # the names `from __future__ import annotations` left.
    create.__annotations__ = {"item": Item, "db": AsyncSession, "return": ItemOut}
    app.post(WRITE_PATH, status_code=201)(create)
    return app


async def _sleep(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        await con.execute("SELECT pg_sleep($1)", request.path_params["seconds"])
    return JSONResponse({"slept": request.path_params["seconds"]})


def sleeper() -> Starlette:
    """This service with a slow query route, for scripts/faults' cancellation rows."""
    return create_app(routes=[Route("/sleep/{seconds:float}", _sleep, methods=["GET"])])
