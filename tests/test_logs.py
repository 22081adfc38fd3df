"""Logging: one line per event; JSON carries the event and its fields."""

from __future__ import annotations

import json
import logging
import logging.config
import sys

from service.logs import JSONFormatter, log_config


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("service.db", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_event_level_and_extra_fields() -> None:
    line = JSONFormatter().format(_record("db.retry in %.1fs", 2.0, attempt=3))
    entry = json.loads(line)
    assert entry["event"] == "db.retry in 2.0s"
    assert entry["level"] == "warning"
    assert entry["logger"] == "service.db"
    assert entry["attempt"] == 3
    assert entry["ts"].endswith("Z")
    assert "\n" not in line


def test_json_includes_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    entry = json.loads(JSONFormatter().format(record))
    assert "ValueError: boom" in entry["exc"]


def test_config_selects_the_format_and_drops_pool_floor_retries() -> None:
    config = log_config("debug", "json")
    assert config["formatters"]["default"]["()"] is JSONFormatter
    assert config["loggers"]["service"]["level"] == "DEBUG"
    assert "format" in log_config("info", "text")["formatters"]["default"]
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logging.config.dictConfig(config)
    try:
        handler = root.handlers[-1]
        noisy = logging.LogRecord(
            "asyncpg.pool",
            logging.WARNING,
            "",
            0,
            "Failed to restore the pool connection floor",
            (),
            None,
        )
        assert not handler.filter(noisy)
        assert handler.filter(_record("db.lost"))
    finally:
        root.handlers[:], root.level = saved
        for name in config["loggers"]:
            logging.getLogger(name).setLevel(logging.NOTSET)
