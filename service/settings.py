"""Settings: read once from the environment (then `.env`), validated once, frozen."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from dotenv import dotenv_values

# SQLAlchemy-style schemes people paste; all mean "PostgreSQL" to us.
_POSTGRES_SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+asyncpg": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgresql+psycopg2": "postgresql",
    "postgres+asyncpg": "postgresql",
    "postgres+psycopg": "postgresql",
}
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """An operator's mistake in the configuration: one line, naming the variable."""


@dataclass(frozen=True)
class DatabaseURL:
    """A PostgreSQL URL whose password never shows in repr, str or logs.

    `value` is None when DATABASE_URL is unset: the drivers then use the libpq
    defaults (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, then localhost:5432).
    """

    value: str | None = field(repr=False)

    @classmethod
    def parse(cls, raw: str | None, name: str = "DATABASE_URL") -> DatabaseURL:
        if raw is None or not raw.strip():
            return cls(None)
        raw = raw.strip()
        scheme, sep, rest = raw.partition("://")
        if not sep:
            raise SettingsError(f"{name}: not a URL (expected postgresql://user@host:port/db)")
        normal = _POSTGRES_SCHEMES.get(scheme.lower())
        if normal is None:
            raise SettingsError(
                f"{name}: scheme {scheme!r} is not PostgreSQL "
                "(expected postgresql://, postgres://, postgresql+asyncpg:// or postgresql+psycopg://)"
            )
        url = f"{normal}://{rest}"
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise SettingsError(f"{name}: the port is not a number from 1 to 65535") from None
        return cls(url)

    @property
    def is_default(self) -> bool:
        return self.value is None

    def with_scheme(self, scheme: str) -> str | None:
        """The URL with another scheme (yoyo wants postgresql+psycopg://)."""
        if self.value is None:
            return None
        return scheme + self.value[len("postgresql") :]

    def with_database(self, database: str) -> DatabaseURL:
        """The same server and credentials, another database (tests, bench)."""
        if self.value is None:
            return DatabaseURL(f"postgresql:///{quote(database)}")
        parts = urlsplit(self.value)
        return DatabaseURL(urlunsplit(parts._replace(path="/" + quote(database))))

    @property
    def redacted(self) -> str:
        """Where we connect, for logs: user@host:port/db, never the password."""
        if self.value is None:
            env = os.environ
            host = env.get("PGHOST", "localhost")
            port = env.get("PGPORT", "5432")
            user = env.get("PGUSER", "")
            db = env.get("PGDATABASE", user)
            who = f"{user}@" if user else ""
            return f"postgresql://{who}{host}:{port}/{db} (libpq defaults)"
        return _redact(urlsplit(self.value))

    def __repr__(self) -> str:
        return f"DatabaseURL({self.redacted!r})"

    __str__ = __repr__


def _redact(parts: SplitResult) -> str:
    netloc = parts.netloc.rpartition("@")
    userinfo, host = (netloc[0], netloc[2]) if netloc[1] else ("", netloc[2])
    user = unquote(userinfo.partition(":")[0])
    masked = f"{quote(user)}:***@" if ":" in userinfo else (f"{quote(user)}@" if user else "")
    query = "&".join(
        f"{k}=***" if k.lower() in {"password", "sslpassword"} else f"{k}={v}"
        for k, _, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=masked + host, query=query))


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


def setting(env: str, parse: Callable[[str, str], Any], default: Any) -> Any:
    """A field read from the environment variable `env` through `parse(env, raw)`."""
    return field(default=default, metadata={"env": env, "parse": parse})


def _url(var: str, raw: str) -> DatabaseURL:
    return DatabaseURL.parse(raw, var)


@dataclass(frozen=True)
class Settings:
    """Every setting, declared once: its variable, how it is read, its default."""

    database_url: DatabaseURL = field(
        default_factory=lambda: DatabaseURL(None),
        metadata={"env": "DATABASE_URL", "parse": _url},
    )
    pool_min_size: int = setting("DB_POOL_MIN_SIZE", _integer(0), 2)
    pool_max_size: int = setting("DB_POOL_MAX_SIZE", _integer(1), 30)
    pool_max_lifetime: float = setting("DB_POOL_MAX_LIFETIME", _seconds(allow_zero=True), 3600.0)
    pool_max_inactive_lifetime: float = setting(
        "DB_POOL_MAX_INACTIVE_LIFETIME", _seconds(allow_zero=True), 300.0
    )
    connect_timeout: float = setting("DB_CONNECT_TIMEOUT", _seconds(), 5.0)
    command_timeout: float = setting("DB_COMMAND_TIMEOUT", _seconds(), 30.0)
    acquire_timeout: float = setting("DB_ACQUIRE_TIMEOUT", _seconds(), 5.0)
    statement_cache_size: int = setting("DB_STATEMENT_CACHE_SIZE", _integer(0), 100)
    ready_timeout: float = setting("DB_READY_TIMEOUT", _seconds(), 0.8)
    close_timeout: float = setting("DB_CLOSE_TIMEOUT", _seconds(), 10.0)
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
    workers: int = setting("WORKERS", _integer(1), 1)
    shutdown_timeout: float = setting("SHUTDOWN_TIMEOUT", _seconds(), 30.0)
    log_level: str = setting("LOG_LEVEL", _choice(*_LOG_LEVELS), "info")
    log_format: str = setting("LOG_FORMAT", _choice("text", "json"), "text")
    access_log: bool = setting("ACCESS_LOG", _boolean, True)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Read the environment, then `.env` (the environment wins); refuse bad values."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)

        kwargs: dict[str, Any] = {}
        for spec in fields(cls):
            var = spec.metadata["env"]
            raw = values.get(var)
            if raw is None or raw.strip() == "":
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
