"""Transactions as a function that may run again (pgx's BeginTxFunc, cockroach-go's ExecuteTx).

The caller passes the work; this owns BEGIN, COMMIT, ROLLBACK and the retries. A
serialization failure (40001) or a deadlock (40P01) means the server rolled the transaction
back and running it again may succeed (PostgreSQL docs, 13.5 "Serialization Failure
Handling"): `fn` runs again from the start, after a jittered pause, up to
DB_TRANSACTION_RETRIES times. `fn` must therefore have no effect outside the transaction
(no HTTP call, no message sent, no module state changed): only what it does through the
connection it is given is undone. A connection lost during COMMIT is never retried: the
server may have committed or not, and TransactionOutcomeUnknown says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, TypeAlias, TypeVar, get_args

import asyncpg

from ..backoff import Backoff
from .connection import GONE, DatabaseUnavailable, connection_gone
from .states import DbState

T = TypeVar("T")
Isolation: TypeAlias = Literal["read_committed", "repeatable_read", "serializable"]
ISOLATION_LEVELS: tuple[Isolation, ...] = get_args(Isolation)
# What running the transaction again may cure: the server rolled it back (SQLSTATE).
RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# Pauses between attempts: 5 ms doubling to 0.5 s, each spread ±50 % (contending
# transactions must not come back in step).
FIRST_PAUSE = 0.005
MAX_PAUSE = 0.5
JITTER = 0.5
# Outcomes counted (db_transactions_total{outcome}).
COMMITTED = "committed"
ROLLED_BACK = "rolled_back"  # fn raised: its error goes on to the caller
RETRIES_EXHAUSTED = "retries_exhausted"
OUTCOME_UNKNOWN = "outcome_unknown"
OUTCOMES = (COMMITTED, ROLLED_BACK, RETRIES_EXHAUSTED, OUTCOME_UNKNOWN)


class TransactionOutcomeUnknown(DatabaseUnavailable):
    """The connection was lost during COMMIT: the transaction may or may not have committed.

    Never retried. The handler answers 503 `{"error": "transaction outcome unknown"}`; a
    client that retries must make its write idempotent (an idempotency key) to be safe.
    """

    def __init__(self) -> None:
        super().__init__(DbState.DISCONNECTED)


class WriteInReadOnlyTransaction(RuntimeError):
    """`run_in_transaction(read_only=True)` and `fn` wrote: the handler's bug (a 500), not a
    server that refuses writes (which would answer 503 read_only and replace connections)."""


class TransactionCounts:
    """Outcomes and retries by SQLSTATE, plain numbers read at scrape time."""

    __slots__ = ("outcomes", "retries")

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.retries = {cls.sqlstate: 0 for cls in RETRYABLE}  # 40001, 40P01


async def run_transaction(
    con: asyncpg.Connection,
    fn: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    isolation: Isolation,
    read_only: bool,
    retries: int,
    counts: TransactionCounts,
) -> T:
    """`fn(con)` in a transaction, committed; run again on 40001/40P01 up to `retries` times.

    Entered and exited as asyncpg's own `async with con.transaction()` is, so the
    connection's release knows it is managed. A wait that ended on our side (a timeout, a
    client that left) is not rolled back here: the release does it once the server has
    confirmed the cancel, in the background (a hung server must not hold the handler).
    """
    if isolation not in ISOLATION_LEVELS:
        raise ValueError(f"isolation {isolation!r} is not one of {', '.join(ISOLATION_LEVELS)}")
    deferrable = read_only and isolation == "serializable"  # never a serialization failure
    pauses = Backoff(FIRST_PAUSE, MAX_PAUSE, jitter=JITTER)
    while True:
        transaction = con.transaction(
            isolation=isolation, readonly=read_only, deferrable=deferrable
        )
        await transaction.__aenter__()
        try:
            result = await fn(con)
        except (asyncio.CancelledError, TimeoutError):
            counts.outcomes[ROLLED_BACK] += 1
            raise
        except RETRYABLE as exc:
            await _roll_back(transaction, exc)
            _retry_or_raise(exc, pauses, retries, counts)
        except asyncpg.ReadOnlySQLTransactionError as exc:
            await _roll_back(transaction, exc)
            counts.outcomes[ROLLED_BACK] += 1
            if read_only:
                raise WriteInReadOnlyTransaction(str(exc)) from exc
            raise
        except BaseException as exc:
            await _roll_back(transaction, exc)
            counts.outcomes[ROLLED_BACK] += 1
            raise
        else:
            try:
                await transaction.__aexit__(None, None, None)  # COMMIT
            except RETRYABLE as exc:  # serializable: the conflict may show at COMMIT
                _retry_or_raise(exc, pauses, retries, counts)
            except (*GONE, asyncpg.InterfaceError) as exc:
                if not connection_gone(exc, con):  # type: ignore[arg-type]  # the pool's proxy
                    raise
                counts.outcomes[OUTCOME_UNKNOWN] += 1
                raise TransactionOutcomeUnknown() from exc
            else:
                counts.outcomes[COMMITTED] += 1
                return result
        await asyncio.sleep(pauses.next() or MAX_PAUSE)  # no budget: never None


def _retry_or_raise(
    exc: asyncpg.PostgresError, pauses: Backoff, retries: int, counts: TransactionCounts
) -> None:
    """Count a retry, or give up (the error goes on: a 503 with Retry-After)."""
    if pauses.attempts > retries:
        counts.outcomes[RETRIES_EXHAUSTED] += 1
        raise exc
    counts.retries[exc.sqlstate] += 1


async def _roll_back(transaction: asyncpg.transaction.Transaction, exc: BaseException) -> None:
    """Roll back what is left of a failed attempt; a dead connection has nothing to undo."""
    try:
        await transaction.__aexit__(type(exc), exc, exc.__traceback__)
    except (*GONE, asyncpg.InterfaceError):
        pass
