"""What a feature's handler uses: a connection, a transaction, a body in, a body out.

    async with db_connection(request) as con: ...              # a connection, released
    row = await run_in_transaction(request, fn, isolation=...)  # fn(con), committed, retried
    order = await read_json(request, OrderIn)                   # bounded, typed: 413/415/400/422
    return json_response(row, status_code=201)                  # Records, datetimes, Decimals

Errors need no handling of their own: a database error answers by the table in
errors.py (409, 422, 400, 503), a lost connection 503, a bad body 4xx.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from sys import _getframe
from types import FrameType
from typing import TypeVar

from starlette.requests import Request

from ..db import Database, Replicas
from ..db.pool import Holder, Proxy
from ..db.transactions import Isolation
from .bodies import json_response, read_json
from .disconnect import SCOPE_KEY
from .middleware import UNMATCHED, route_template

T = TypeVar("T")

__all__ = ["db_connection", "json_response", "read_json", "run_in_transaction"]


def db_connection(
    request: Request, *, read_only: bool = False
) -> AbstractAsyncContextManager[Proxy]:
    """The request-scoped connection helper (FastAPI's `Depends(get_db)` session, here).

    `async with db_connection(request) as con:` acquires within DB_ACQUIRE_TIMEOUT and
    always releases, also when the handler raises; no connection means a 503, and so does a
    write the server refuses as read-only (`"db": "read_only"`) or a connection that dies
    under the handler (`"db": "disconnected"`). `read_only=True`: a read replica's
    connection when one is configured, up and current, else the primary's.
    """
    watch = request.scope.get(SCOPE_KEY)  # a client that leaves cancels the query
    db: Database = request.state.db
    holder = None
    if db.warns_on_long_holds:  # DB_HOLD_WARNING_MS: only then is the caller looked up
        holder = _holder(request, _getframe(1))
    if read_only:
        reads: Replicas = request.state.reads
        return reads.connection(watch=watch, holder=holder)
    return db.connection(watch=watch, holder=holder)


async def run_in_transaction(
    request: Request,
    fn: Callable[[Proxy], Awaitable[T]],
    *,
    isolation: Isolation = "read_committed",
    read_only: bool = False,
) -> T:
    """`await fn(con)` in a transaction on the primary, committed, and its result returned.

    `isolation`: read_committed, repeatable_read or serializable; `read_only=True` opens a
    READ ONLY transaction (DEFERRABLE too when serializable: it never fails to serialize).
    On a serialization failure (40001) or a deadlock (40P01) `fn` runs again from the start,
    after a jittered pause, up to DB_TRANSACTION_RETRIES times, then the request answers
    503 with Retry-After. `fn` must have no effect outside the transaction: it may run more
    than once. A connection lost during COMMIT is not retried: TransactionOutcomeUnknown,
    a 503 saying the outcome is unknown.
    """
    db: Database = request.state.db
    holder = _holder(request, _getframe(1)) if db.warns_on_long_holds else None
    return await db.run_in_transaction(
        fn,
        isolation=isolation,
        read_only=read_only,
        watch=request.scope.get(SCOPE_KEY),
        holder=holder,
    )


def _holder(request: Request, caller: FrameType) -> Holder:
    """The route template and the handler's line calling us (file:line, the path relative
    to the working directory when under it), for DB_HOLD_WARNING_MS's warning."""
    path = caller.f_code.co_filename
    here = os.getcwd() + os.sep
    site = f"{path.removeprefix(here)}:{caller.f_lineno}"
    return Holder(route_template(request.scope) or UNMATCHED, site)
