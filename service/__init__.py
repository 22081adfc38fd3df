"""The PostgreSQL foundation of a Python web service: Starlette + asyncpg + yoyo.

The public face, for a feature's code:

    create_app(settings=None, *, routes=(), on_connect=None)   the app (service.web.app)
    db_connection(request, *, read_only=False)                  a connection for a block
    run_in_transaction(request, fn, *, isolation, read_only)    fn(con) committed, retried
    read_json(request, model=Any)                               a body: bounded, typed
    json_response(content, status_code=200, headers=None)      Records, datetimes, Decimals
    Settings                                                    every setting, read once
    TransactionOutcomeUnknown                                   COMMIT's fate unknown (503)

The names load on first use, so `python -m service migrate` loads neither Starlette nor
asyncpg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .db.transactions import TransactionOutcomeUnknown
    from .settings import Settings
    from .web.app import create_app
    from .web.handlers import db_connection, json_response, read_json, run_in_transaction

__all__ = [
    "Settings",
    "TransactionOutcomeUnknown",
    "create_app",
    "db_connection",
    "json_response",
    "read_json",
    "run_in_transaction",
]

_WHERE = {
    "create_app": "web.app",
    "db_connection": "web.handlers",
    "json_response": "web.handlers",
    "read_json": "web.handlers",
    "run_in_transaction": "web.handlers",
    "Settings": "settings",
    "TransactionOutcomeUnknown": "db.transactions",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{where}"), name)
