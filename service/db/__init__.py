"""The database: one asyncpg pool per Database, a read-replica layer above two of them.

    states        DbState: the readiness words
    singleflight  one probe at a time under a deadline (knows nothing of Database)
    connection    one connection: why it failed (one word), retirement, the release reset
    opening       how a connection is opened and set up (start-up parameters, password,
                  host by host, socket options, codecs, on_connect), and counted
    pool          Database: one pool, its connections lent and counted, readiness, close
    transactions  run_in_transaction's retries; codecs: JSON values as Python objects
    replica       Replicas: read_only=True connections from the replica or the primary

Depends on the settings only; knows nothing of HTTP or migrations.
"""

from __future__ import annotations

from .connection import DatabaseUnavailable, QueryTimeout
from .pool import Database, PooledConnection, PoolStats
from .replica import Replicas, ReplicaStats
from .states import DbState

__all__ = [
    "Database",
    "DatabaseUnavailable",
    "DbState",
    "PoolStats",
    "PooledConnection",
    "QueryTimeout",
    "ReplicaStats",
    "Replicas",
]
