"""Logging: one line per event; JSON carries the event and its fields."""

from __future__ import annotations

import json
import logging
import logging.config
import subprocess
import sys
from pathlib import Path

from service.logs import JSONFormatter, log_config
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


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


def _logged(level: str, fmt: str, secrets: tuple[str, ...], code: str) -> list[str]:
    """What a process configured by log_config writes to stderr when it runs `code`."""
    script = (
        "import logging, logging.config\n"
        "from service.logs import log_config\n"
        f"logging.config.dictConfig(log_config({level!r}, {fmt!r}, {secrets!r}))\n" + code
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_a_features_logger_is_shown_at_the_level_in_the_format() -> None:
    code = (
        "log = logging.getLogger('orchestrator')\n"
        "log.debug('hidden at info')\n"
        "log.info('approval.created id=%d', 7)\n"
        "logging.getLogger('asyncpg.pool').info('chatter')\n"
    )
    lines = _logged("info", "json", (), code)
    assert [json.loads(line)["event"] for line in lines] == ["approval.created id=7"]
    assert json.loads(lines[0])["logger"] == "orchestrator"
    text = _logged("debug", "text", (), code)
    assert len(text) == 2
    assert text[0].endswith(" DEBUG   orchestrator hidden at info")
    assert text[1].endswith(" INFO    orchestrator approval.created id=7")


def test_no_line_shows_a_database_password() -> None:
    secret = "s3cr%2Ft-pw"
    code = (
        "log = logging.getLogger('orchestrator')\n"
        f"log.warning('connecting to postgresql://app:%s@db/app', {secret!r})\n"
        "try:\n"
        f"    raise RuntimeError('auth failed for s3cr/t-pw')\n"
        "except RuntimeError:\n"
        "    log.exception('failed')\n"
    )
    settings = Settings.from_env(
        {"DATABASE_URL": f"postgresql://app:{secret}@db/app"}, env_file=None
    )
    output = "\n".join(_logged("info", "text", settings.secrets(), code))
    assert "postgresql://app:***@db/app" in output
    assert "auth failed for ***" in output  # in a traceback too, decoded
    assert "s3cr" not in output
