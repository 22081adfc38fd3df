"""The ladder lives in the package (service/testing/servers.py); the suite's modules import
it from here as before."""

from service.testing.servers import (
    RUNG_DESCRIPTIONS,
    Server,
    rung,
    throwaway_database,
    throwaway_server,
)

__all__ = ["RUNG_DESCRIPTIONS", "Server", "rung", "throwaway_database", "throwaway_server"]
