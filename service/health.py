"""Liveness and readiness routes."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse

from .db import CONNECTED, Database

NO_STORE = {"Cache-Control": "no-store"}
HEALTH_JSON = "application/health+json"  # IETF draft-inadarei-api-health-check


class HealthJSONResponse(JSONResponse):
    media_type = HEALTH_JSON


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers. Never touches the database."""
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def ready(request: Request) -> JSONResponse:
    """Readiness: `SELECT 1` through the pool within DB_READY_TIMEOUT; 200 or 503."""
    db: Database = request.state.db
    start = time.perf_counter()
    state = await db.check()
    elapsed = time.perf_counter() - start
    request.app.state.metrics.observe_ready(state, elapsed)
    ok = state == CONNECTED
    status_code = 200 if ok else 503
    if wants_health_json(request.headers.get("accept", "")):
        return HealthJSONResponse(
            health_json(state, elapsed), status_code=status_code, headers=NO_STORE
        )
    body = {"ready": ok, "dependencies": {"db": state, "redis": "unknown"}}
    return JSONResponse(body, status_code=status_code, headers=NO_STORE)


def wants_health_json(accept: str) -> bool:
    """True when the Accept header lists application/health+json (and not with q=0)."""
    for item in accept.split(","):
        media_type, *params = (part.strip().lower() for part in item.split(";"))
        if media_type == HEALTH_JSON:
            return not any(
                p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params
            )
    return False


def health_json(state: str, seconds: float) -> dict[str, object]:
    """The readiness answer in the IETF health-check format: pass or fail, and why."""
    ok = state == CONNECTED
    check: dict[str, object] = {
        "componentType": "datastore",
        "observedValue": round(seconds * 1000, 3),
        "observedUnit": "ms",
        "status": "pass" if ok else "fail",
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    body: dict[str, object] = {"status": "pass" if ok else "fail"}
    if not ok:
        check["output"] = state  # the readiness word: timeout, disconnected, …
        body["output"] = f"db: {state}"
    body["checks"] = {"db:responseTime": [check]}
    return body
