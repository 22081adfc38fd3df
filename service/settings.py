"""Settings: read once from the environment (then `.env`), validated once, frozen."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from .database_url import TARGET_SESSION_ATTRS, DatabaseURL
from .errors import SettingsError
from .password_file import VARIABLE as PASSWORD_FILE
from .password_file import PasswordFileError, read_password

__all__ = ["DatabaseURL", "Settings", "SettingsError", "setting"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# Ceilings well above any sane deployment, low enough that a typo is refused rather than
# obeyed (asyncpg allocates a slot per pool connection up front; each worker is a process).
MAX_POOL_SIZE = 1000
MAX_WORKERS = 64
MAX_STATEMENT_CACHE_SIZE = 10_000
MAX_TRANSACTION_RETRIES = 100
MAX_BODY_BYTES = 1024**3  # 1 GiB: a body is read into memory whole


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(var: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{var}: {raw!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise SettingsError(f"{var}: {value} is out of range (must be {bound})")
        return value

    return parse


def _seconds(*, allow_zero: bool = False) -> Callable[[str, str], float]:
    def parse(var: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{var}: {raw!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            need = ">= 0" if allow_zero else "> 0"
            raise SettingsError(f"{var}: {raw!r} is out of range (seconds, must be {need})")
        return value

    return parse


def _milliseconds(var: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{var}: {raw!r} is not a number of milliseconds") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{var}: {raw!r} is out of range (milliseconds, must be >= 0)")
    return value


def _url_text(var: str, raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or any(c.isspace() for c in raw):
        raise SettingsError(f"{var}: {raw!r} is not an http:// or https:// URL")
    return raw


def _choice(*choices: str) -> Callable[[str, str], str]:
    def parse(var: str, raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise SettingsError(f"{var}: {raw!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _boolean(var: str, raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{var}: {raw!r} is not a boolean (true/false)")


def _host(var: str, raw: str) -> str:
    if any(c.isspace() for c in raw):
        raise SettingsError(f"{var}: {raw!r} is not a host name or address")
    return raw


def _read_env_file(path: Path) -> dict[str, str]:
    """`.env` as a mapping; a line that does not parse, or bytes that are not UTF-8, are refused.

    python-dotenv skips a line it cannot parse (`PORT="9000`) with a warning, which would
    leave the default in force; we name the line instead, never its content (secrets).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SettingsError(f"{path}: line {line} is not UTF-8 text") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise SettingsError(
                f"{path}: line {binding.original.line} is not NAME=value (an unterminated quote?)"
            )
    values = dotenv_values(stream=io.StringIO(text))
    return {name: value for name, value in values.items() if value is not None}


def setting(env: str, parse: Callable[[str, str], Any], default: Any) -> Any:
    """A field read from the environment variable `env` through `parse(env, raw)`."""
    return field(default=default, metadata={"env": env, "parse": parse})


def _url(var: str, raw: str) -> DatabaseURL:
    return DatabaseURL.parse(raw, var)


def _path(var: str, raw: str) -> Path:
    return Path(raw)


# scripts/dev writes the dev database's DATABASE_URL here (beside `.env`) while it runs, so
# that `migrate` and `serve` in another terminal of the checkout reach it; read after the
# environment and `.env`, which win.
DEV_ENV_FILE = Path(".data") / "dev.env"

# A replica URL may list several standbys (and the primary last); prefer-standby takes the
# first standby that answers, and the primary when none does: reads keep working either way.
REPLICA_SESSION_ATTRS = "prefer-standby"


@dataclass(frozen=True)
class Settings:
    """Every setting, declared once: its variable, how it is read, its default."""

    database_url: DatabaseURL = field(
        default_factory=lambda: DatabaseURL(None),
        metadata={"env": "DATABASE_URL", "parse": _url},
    )
    target_session_attrs: str = setting(
        "DB_TARGET_SESSION_ATTRS", _choice(*TARGET_SESSION_ATTRS), "read-write"
    )
    replica_url: DatabaseURL | None = setting("DATABASE_REPLICA_URL", _url, None)
    # Read for every new connection (service/password_file.py); None: the URL's, or libpq's.
    password_file: Path | None = setting(PASSWORD_FILE, _path, None)
    replica_max_lag: float = setting("DB_REPLICA_MAX_LAG", _seconds(), 5.0)
    pool_min_size: int = setting("DB_POOL_MIN_SIZE", _integer(0, MAX_POOL_SIZE), 2)
    pool_max_size: int = setting("DB_POOL_MAX_SIZE", _integer(1, MAX_POOL_SIZE), 30)
    pool_max_lifetime: float = setting("DB_POOL_MAX_LIFETIME", _seconds(allow_zero=True), 3600.0)
    pool_max_inactive_lifetime: float = setting(
        "DB_POOL_MAX_INACTIVE_LIFETIME", _seconds(allow_zero=True), 300.0
    )
    connect_timeout: float = setting("DB_CONNECT_TIMEOUT", _seconds(), 5.0)
    command_timeout: float = setting("DB_COMMAND_TIMEOUT", _seconds(), 30.0)
    acquire_timeout: float = setting("DB_ACQUIRE_TIMEOUT", _seconds(), 5.0)
    statement_cache_size: int = setting(
        "DB_STATEMENT_CACHE_SIZE", _integer(0, MAX_STATEMENT_CACHE_SIZE), 100
    )
    ready_timeout: float = setting("DB_READY_TIMEOUT", _seconds(), 0.8)
    close_timeout: float = setting("DB_CLOSE_TIMEOUT", _seconds(), 10.0)
    reset_on_release: str = setting("DB_RESET_ON_RELEASE", _choice("rollback", "full"), "rollback")
    slow_query_ms: float = setting("DB_SLOW_QUERY_MS", _milliseconds, 0.0)
    transaction_retries: int = setting(
        "DB_TRANSACTION_RETRIES", _integer(0, MAX_TRANSACTION_RETRIES), 10
    )
    hold_warning_ms: float = setting("DB_HOLD_WARNING_MS", _milliseconds, 0.0)
    idle_in_transaction_timeout: float = setting(
        "DB_IDLE_IN_TRANSACTION_TIMEOUT", _seconds(allow_zero=True), 60.0
    )
    migrate_on_startup: bool = setting("DB_MIGRATE_ON_STARTUP", _boolean, False)
    migrate_lock_timeout: float = setting("MIGRATE_LOCK_TIMEOUT", _seconds(allow_zero=True), 60.0)
    migrate_statement_lock_timeout: float = setting(
        "MIGRATE_STATEMENT_LOCK_TIMEOUT", _seconds(allow_zero=True), 1.0
    )
    migrate_lock_retry_budget: float = setting(
        "MIGRATE_LOCK_RETRY_BUDGET", _seconds(allow_zero=True), 180.0
    )
    migrate_statement_timeout: float = setting(
        "MIGRATE_STATEMENT_TIMEOUT", _seconds(allow_zero=True), 600.0
    )
    host: str = setting("HOST", _host, "127.0.0.1")
    port: int = setting("PORT", _integer(1, 65535), 8000)
    workers: int = setting("WORKERS", _integer(1, MAX_WORKERS), 1)
    shutdown_timeout: float = setting("SHUTDOWN_TIMEOUT", _seconds(), 30.0)
    # Above the idle timeouts of the load balancers in front (AWS ALB: 60 s), so they close
    # an idle connection first and never reuse one we just closed (an intermittent 502).
    http_keepalive_timeout: float = setting("HTTP_KEEPALIVE_TIMEOUT", _seconds(), 75.0)
    otel_endpoint: str = setting("OTEL_EXPORTER_OTLP_ENDPOINT", _url_text, "")
    log_level: str = setting("LOG_LEVEL", _choice(*_LOG_LEVELS), "info")
    log_format: str = setting("LOG_FORMAT", _choice("text", "json"), "text")
    access_log: bool = setting("ACCESS_LOG", _boolean, True)
    max_body_bytes: int = setting("HTTP_MAX_BODY_BYTES", _integer(1, MAX_BODY_BYTES), 1024 * 1024)

    @property
    def session_attrs(self) -> str:
        """Which server of the URL's hosts to use. The one rule: the URL's own
        target_session_attrs wins; DB_TARGET_SESSION_ATTRS fills in (prefer-standby for a
        replica, see for_replica)."""
        return self.database_url.target_session_attrs or self.target_session_attrs

    def secrets(self) -> tuple[str, ...]:
        """The passwords these settings hold (the logs redact them)."""
        urls = (self.database_url, self.replica_url)
        return tuple(secret for url in urls if url is not None for secret in url.secrets)

    def for_replica(self) -> Settings:
        """The same pool settings on DATABASE_REPLICA_URL (which must be set)."""
        assert self.replica_url is not None
        return replace(
            self,
            database_url=self.replica_url,
            target_session_attrs=REPLICA_SESSION_ATTRS,
            replica_url=None,
            migrate_on_startup=False,
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read the environment, then `.env`, then scripts/dev's `.data/dev.env` beside it
        (the first to give a variable wins); refuse bad values. `env_file=None`: the
        environment alone."""
        values: dict[str, str] = {}
        if env_file is not None:
            for path in (Path(env_file).parent / DEV_ENV_FILE, Path(env_file)):  # last wins
                if path.is_file():
                    values.update({k: v for k, v in _read_env_file(path).items() if v.strip()})
        # An empty variable is the same as an unset one: `.env`, then the default, applies.
        environ = os.environ if environ is None else environ
        values.update({k: v for k, v in environ.items() if v.strip()})

        kwargs: dict[str, Any] = {}
        for spec in fields(cls):
            var = spec.metadata["env"]
            raw = values.get(var)  # empty ones were left out above
            if raw is None:
                continue
            kwargs[spec.name] = spec.metadata["parse"](var, raw.strip())
        settings = cls(**kwargs)
        settings.validate()
        return settings

    @classmethod
    def variables(cls) -> tuple[str, ...]:
        """The environment variables the service reads (docs, compose checks)."""
        return tuple(spec.metadata["env"] for spec in fields(cls))

    def validate(self) -> None:
        if self.pool_min_size > self.pool_max_size:
            raise SettingsError(
                f"DB_POOL_MIN_SIZE: {self.pool_min_size} is larger than "
                f"DB_POOL_MAX_SIZE ({self.pool_max_size})"
            )
        if self.password_file is not None:
            self._check_password_file(self.password_file)

    def _check_password_file(self, path: Path) -> None:
        """One password, from one place; a file that gives none is refused at start."""
        for var, url in (
            ("DATABASE_URL", self.database_url),
            ("DATABASE_REPLICA_URL", self.replica_url),
        ):
            if url is not None and url.has_password:
                raise SettingsError(
                    f"{var} and {PASSWORD_FILE} both give a password: keep one "
                    f"(remove it from {var}, or unset {PASSWORD_FILE})"
                )
        try:
            read_password(path)  # not kept: each connection reads it again
        except PasswordFileError as exc:
            raise SettingsError(str(exc)) from None
