"""The words `/api/v1/ready` says about the database: one enum, the wire format as it is."""

from __future__ import annotations

from enum import StrEnum


class DbState(StrEnum):
    """The last known state of the database; each value is the word on the wire."""

    CONNECTED = "connected"
    CONNECTING = "connecting"  # the first attempt is under way
    DISCONNECTED = "disconnected"
    TIMEOUT = "timeout"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_DATABASE = "unknown_database"
    UNAVAILABLE = "unavailable"  # the server answers but refuses work (starting, too many clients)
    READ_ONLY = "read_only"  # the server answers but refuses writes (a standby, a demoted primary)
    ERROR = "error"
    CLOSED = "closed"


# The replica's word beside "db" (`db_replica`): a DbState word, or this one when it is up
# but further behind the primary than DB_REPLICA_MAX_LAG.
LAGGING = "lagging"
REPLICA_WORDS: tuple[str, ...] = (*DbState, LAGGING)
