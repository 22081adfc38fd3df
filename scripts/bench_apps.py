"""The three apps `scripts/bench` compares on one read: `SELECT id, v FROM t WHERE id = $1`.

- `project`: this service, the read added as a feature route through `create_app(routes=...)`.
- `lean`: the leanest Starlette + asyncpg app: a bare `pool.acquire()`, no middleware.
- `sqlalchemy`: the original design: FastAPI + SQLAlchemy's async engine and a session per
  request from a `get_db` dependency (pool 20 + overflow 10, pre-ping, hourly recycle).

Each is a uvicorn factory (`uvicorn bench_apps:lean --factory`) reading DATABASE_URL, served
with the same flags as `python -m service serve`. Not part of the service.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import create_app, db_connection

READ = "SELECT id, v FROM t WHERE id = $1"
ROWS = 10_000
PATH = "/item/{item_id:int}"
SETUP = f"""
DROP TABLE IF EXISTS t;
CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, {ROWS}) AS i;
ANALYZE t;
"""


async def _item(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        row = await con.fetchrow(READ, request.path_params["item_id"])
    if row is None:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse({"id": row["id"], "v": row["v"]})


def project() -> Starlette:
    """This service with one feature route, as a user adds it."""
    return create_app(routes=[Route(PATH, _item, methods=["GET"])])


def lean() -> Starlette:
    """Starlette + a bare asyncpg pool: the floor the project is measured against."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=2, max_size=30)
        yield {"pool": pool}
        await pool.close()

    async def item(request: Request) -> JSONResponse:
        async with request.state.pool.acquire() as con:
            row = await con.fetchrow(READ, request.path_params["item_id"])
        if row is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse({"id": row["id"], "v": row["v"]})

    return Starlette(routes=[Route(PATH, item, methods=["GET"])], lifespan=lifespan)


def sqlalchemy() -> Any:
    """The original design: FastAPI, SQLAlchemy async engine, a session per request."""
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

    return app


async def _sleep(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        await con.execute("SELECT pg_sleep($1)", request.path_params["seconds"])
    return JSONResponse({"slept": request.path_params["seconds"]})


def sleeper() -> Starlette:
    """This service with a slow query route, for scripts/faults' cancellation rows."""
    return create_app(routes=[Route("/sleep/{seconds:float}", _sleep, methods=["GET"])])
