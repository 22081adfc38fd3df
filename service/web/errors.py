"""Errors as answers: one table from a database error's SQLSTATE to an HTTP status (PostgREST's
way), the service's own 503s, and what a request body can do wrong.

| SQLSTATE | meaning | answer |
|---|---|---|
| 23505, 23503, 23P01 | unique, foreign key, exclusion violation | 409 |
| other 23xxx | not-null, check, … (integrity constraint violation) | 422 |
| 22xxx | data exception: bad text representation, out of range, \\u0000 | 400 |
| 22000 | also a parameter asyncpg cannot encode (an int too large for bigint) | 400 |
| 40001, 40P01 | serialization failure, deadlock (retries exhausted) | 503, Retry-After |
| 57014 | query canceled (a server-side statement_timeout, pg_cancel_backend) | 503, Retry-After |
| 53xxx | insufficient resources (disk full, out of memory) | 503, Retry-After |
| anything else | a bug or the server's trouble | 500, traceback in the log only |

The body names the error's class (PostgreSQL's condition name) and SQLSTATE and, for
23xxx, the constraint (and the column of a not-null violation): never the offending value,
which is the user's data. A handler can still catch a database error and answer first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..db import DatabaseUnavailable, QueryTimeout
from ..db.transactions import TransactionOutcomeUnknown
from .middleware import SERVER_ERROR, UNMATCHED, log_unhandled, route_template
from .sqlstates import CONDITIONS

log = logging.getLogger("service.app")

RETRY_AFTER = {"Retry-After": "1"}
CONFLICTS = {"23505", "23503", "23P01"}
RETRY_LATER = {"40001", "40P01", "57014"}
_WORDS = re.compile(r"(?<!^)(?=[A-Z])")


class BodyError(Exception):
    """A request body the handler cannot use: 400, 413, 415 or 422, with per-field errors."""

    def __init__(self, status_code: int, error: str, fields: Sequence[dict[str, str]] = ()) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error
        self.fields = list(fields)


def condition(exc: asyncpg.PostgresError) -> str:
    """PostgreSQL's condition name: unique_violation, serialization_failure, …"""
    known = CONDITIONS.get(exc.sqlstate or "")
    if known is not None:
        return known
    return _WORDS.sub("_", type(exc).__name__.removesuffix("Error")).lower()


def database_error_answer(exc: asyncpg.PostgresError) -> JSONResponse | None:
    """The answer the table gives `exc`, or None: not the client's doing (a 500)."""
    state = exc.sqlstate or ""
    body: dict[str, Any] = {"error": condition(exc), "sqlstate": state}
    if state in RETRY_LATER or state.startswith("53"):
        return JSONResponse(body, status_code=503, headers=RETRY_AFTER)
    if state.startswith("23"):
        constraint = getattr(exc, "constraint_name", None)
        if constraint:
            body["constraint"] = constraint
        column = getattr(exc, "column_name", None)
        if state == "23502" and column:  # not-null names no constraint, only its column
            body["column"] = column
        return JSONResponse(body, status_code=409 if state in CONFLICTS else 422)
    if state.startswith("22"):
        return JSONResponse(body, status_code=400)
    return None


async def database_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, asyncpg.PostgresError)
    answer = database_error_answer(exc)
    if answer is None:
        log_unhandled(request.method, route_template(request.scope) or UNMATCHED, exc)
        return SERVER_ERROR
    return answer


async def body_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyError)
    body: dict[str, Any] = {"error": exc.error}
    if exc.fields:
        body["fields"] = exc.fields
    return JSONResponse(body, status_code=exc.status_code)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DatabaseUnavailable)
    return JSONResponse(
        {"error": "database unavailable", "db": exc.reason}, status_code=503, headers=RETRY_AFTER
    )


async def outcome_unknown(request: Request, exc: Exception) -> Response:
    log.warning(
        "db.commit_outcome_unknown route=%s method=%s",
        route_template(request.scope) or request.url.path,
        request.method,
    )
    return JSONResponse(
        {"error": "transaction outcome unknown", "db": "disconnected"},
        status_code=503,
        headers=RETRY_AFTER,
    )


async def query_timeout(request: Request, exc: Exception) -> Response:
    # Once per timeout, with the route template; never the query's parameters.
    route = route_template(request.scope) or request.url.path
    log.warning("db.query_timeout route=%s method=%s", route, request.method)
    return JSONResponse({"error": "database timeout"}, status_code=503, headers=RETRY_AFTER)


HANDLERS = {
    QueryTimeout: query_timeout,
    TransactionOutcomeUnknown: outcome_unknown,
    DatabaseUnavailable: database_unavailable,
    asyncpg.PostgresError: database_error,
    BodyError: body_error,
}
