"""Liveness and readiness: the routes, and the answers the request middleware gives probes
directly (service/web/middleware.py) without the router."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from ..db import Database, DbState, Replicas
from ..db.states import REPLICA_WORDS
from .metrics import Metrics

HEALTH_PATH = "/api/v1/health"
READY_PATH = "/api/v1/ready"

NO_STORE = {"Cache-Control": "no-store"}
HEALTH_JSON = "application/health+json"  # IETF draft-inadarei-api-health-check
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, body, raw headers


class HealthJSONResponse(JSONResponse):
    media_type = HEALTH_JSON


class Prerendered(Response):
    """An answer rendered once at import: per request, no json.dumps and no header encoding.

    The body can only be one of a few, and rendering it per request showed in the profile
    of a readiness flood (docs/performance.md).
    """

    def __init__(self, answer: Answer) -> None:
        self.status_code, self.body, raw_headers = answer
        self.raw_headers = list(raw_headers)  # a middleware may add to it
        self.background = None


def prerender(body: object, status_code: int = 200) -> Answer:
    """Exactly what JSONResponse would send, kept as bytes."""
    response = JSONResponse(body, status_code=status_code, headers=NO_STORE)
    return status_code, bytes(response.body), response.raw_headers


def _ready_answer(state: DbState, replica: str | None = None) -> Answer:
    """The body as it always was; `db_replica` only when a replica is configured."""
    ok = state == DbState.CONNECTED  # a replica never makes the service unready
    dependencies = {"db": state} if replica is None else {"db": state, "db_replica": replica}
    body = {"ready": ok, "dependencies": {**dependencies, "redis": "unknown"}}
    return prerender(body, 200 if ok else 503)


HEALTH_ANSWER = prerender({"status": "ok"})
READY_ANSWERS = {state: _ready_answer(state) for state in DbState}
READY_ANSWERS_WITH_REPLICA = {
    (state, replica): _ready_answer(state, replica)
    for state in DbState
    for replica in REPLICA_WORDS
}


async def health(request: Request) -> Response:
    """Liveness: the process answers. Never touches the database."""
    return Prerendered(HEALTH_ANSWER)


async def ready(request: Request) -> Response:
    """Readiness: one query through the pool (the server answers and takes writes) within
    DB_READY_TIMEOUT; 200 or 503."""
    return await readiness(request.scope, request.app.state.metrics)


async def readiness(scope: Scope, metrics: Metrics) -> Response:
    """The readiness answer for a request's scope (the route, or the middleware's fast path)."""
    state: dict[str, Any] = scope["state"]
    db: Database = state["db"]
    start = time.perf_counter()
    word = await db.check()
    elapsed = time.perf_counter() - start
    metrics.observe_ready(word, elapsed)
    reads: Replicas = state["reads"]
    replica = reads.word()  # None unless DATABASE_REPLICA_URL is set
    if wants_health_json(_accept(scope)):
        status_code = 200 if word == DbState.CONNECTED else 503
        return HealthJSONResponse(
            health_json(word, elapsed, replica), status_code=status_code, headers=NO_STORE
        )
    if replica is None:
        return Prerendered(READY_ANSWERS[word])
    return Prerendered(READY_ANSWERS_WITH_REPLICA[word, replica])


def _accept(scope: Scope) -> str:
    """The Accept header, read from the scope.

    `request.headers.get` builds a Headers object and, when the header is absent, raises
    and catches a KeyError on every probe (docs/performance.md).
    """
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:  # ASGI names are lower-case
        if name == b"accept":
            return value.decode("latin-1")
    return ""


def wants_health_json(accept: str) -> bool:
    """True when the Accept header lists application/health+json (and not with q=0)."""
    if "health+json" not in accept.lower():
        return False  # every probe that did not ask: skip the parse
    for item in accept.split(","):
        media_type, *params = (part.strip().lower() for part in item.split(";"))
        if media_type == HEALTH_JSON:
            return not any(
                p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params
            )
    return False


def health_json(state: DbState, seconds: float, replica: str | None = None) -> dict[str, object]:
    """The readiness answer in the IETF health-check format: pass or fail, and why.

    A configured replica is a check of its own, `warn` when it cannot serve reads (they
    go to the primary), never `fail`.
    """
    ok = state == DbState.CONNECTED
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
    checks: dict[str, object] = {"db:responseTime": [check]}
    if replica is not None:
        replica_ok = replica == DbState.CONNECTED
        replica_check = {"componentType": "datastore", "status": "pass" if replica_ok else "warn"}
        if not replica_ok:
            replica_check["output"] = replica
        checks["db_replica:status"] = [replica_check]
    body["checks"] = checks
    return body
