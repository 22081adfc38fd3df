"""Logging: one line per event, as text or JSON, for the service and uvicorn alike."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# Attributes every LogRecord has; anything else came in through `extra=` and is a field.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, event, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _DropPoolFloorRetries(logging.Filter):
    """asyncpg logs a traceback for each retry of its connection floor; we log state changes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "connection floor" not in record.getMessage()


def log_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A dictConfig for the service, uvicorn and asyncpg (passed to uvicorn as log_config)."""
    formatter = (
        {"()": JSONFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)-7s %(name)s %(message)s"}
    )
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"pool_floor": {"()": _DropPoolFloorRetries}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "filters": ["pool_floor"],
            }
        },
        "loggers": {
            "service": {"level": level},
            "uvicorn": {"level": level},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"level": level},
            "asyncpg": {"level": "WARNING"},
            "yoyo": {"level": "WARNING"},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
