"""Liveness and readiness routes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from .db import CONNECTED, Database

NO_STORE = {"Cache-Control": "no-store"}


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers. Never touches the database."""
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def ready(request: Request) -> JSONResponse:
    """Readiness: `SELECT 1` through the pool within DB_READY_TIMEOUT; 200 or 503."""
    db: Database = request.state.db
    state = await db.check()
    ok = state == CONNECTED
    body = {"ready": ok, "dependencies": {"db": state, "redis": "unknown"}}
    return JSONResponse(body, status_code=200 if ok else 503, headers=NO_STORE)
