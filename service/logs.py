"""Logging: one line per event, as text or JSON, for the service, uvicorn and features alike.

Every logger is shown at LOG_LEVEL (a feature's `logging.getLogger("orders")` too), but for
libraries that narrate their internals (asyncpg, yoyo, httpx, …), kept at WARNING. The
one handler writes each line through the same redaction: the database passwords the
settings hold are replaced by `***`, in messages and tracebacks alike.
"""

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


# Libraries whose INFO and DEBUG lines narrate their internals.
QUIET_LOGGERS = ("asyncpg", "yoyo", "httpx", "httpcore", "urllib3", "opentelemetry", "multipart")
MIN_SECRET_LENGTH = 4  # shorter ones would garble every line they happen to appear in


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]  # untyped stream
    """A stream handler that writes no secret: each occurrence, anywhere in the line (the
    message, its arguments, a traceback), becomes `***`."""

    def __init__(self, stream: Any = None, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(stream)
        self.secrets = tuple(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


class _DropPoolFloorRetries(logging.Filter):
    """asyncpg logs a traceback for each retry of its connection floor; we log state changes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "connection floor" not in record.getMessage()


def log_config(
    level: str = "info", fmt: str = "text", secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A dictConfig for every logger (passed to uvicorn as log_config); `secrets` are never
    written."""
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
                "()": RedactingHandler,
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "secrets": secrets,
                "filters": ["pool_floor"],
            }
        },
        "loggers": {
            "service": {"level": level},
            "uvicorn": {"level": level},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"level": level},
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
        },
        "root": {"handlers": ["default"], "level": level},
    }
