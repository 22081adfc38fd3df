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
    ERROR = "error"
    CLOSED = "closed"
