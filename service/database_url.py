"""DATABASE_URL: one split of a libpq URL, checked, redacted from the same split."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from urllib.parse import quote, unquote

from .errors import SettingsError

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
# What libpq (14+) and asyncpg both accept for target_session_attrs.
TARGET_SESSION_ATTRS = ("read-write", "any", "primary", "read-only", "standby", "prefer-standby")
# libpq's TCP parameters. libpq applies them to its socket; asyncpg knows none of them and
# would send them to the server as settings, which it refuses (FATAL: unrecognized
# configuration parameter): the service strips them from asyncpg's URL and applies them
# to each connection's socket itself (service/db/connection.py).
SOCKET_PARAMS = (
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """TCP keepalives and the user timeout of a connection, with libpq's meaning.

    0 (for the durations and the count) leaves the system's default, as in libpq. Our
    defaults differ from libpq's where libpq leaves the system's (2 h before the first
    probe, no user timeout): an idle connection whose peer vanished is dropped after about
    40 s, and data the peer never acknowledges fails the connection after 10 s.
    """

    keepalives: bool = True  # SO_KEEPALIVE (libpq's `keepalives`, 0 = off)
    idle: int = 30  # seconds of silence before the first probe (TCP_KEEPIDLE)
    interval: int = 10  # seconds between probes (TCP_KEEPINTVL)
    count: int = 3  # unanswered probes before the connection is dropped (TCP_KEEPCNT)
    user_timeout_ms: int = 10_000  # unacknowledged data fails the connection (TCP_USER_TIMEOUT)

    def libpq(self) -> dict[str, int]:
        """The same options as libpq connection parameters (the migrate command's)."""
        return {
            "keepalives": int(self.keepalives),
            "keepalives_idle": self.idle,
            "keepalives_interval": self.interval,
            "keepalives_count": self.count,
            "tcp_user_timeout": self.user_timeout_ms,
        }


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
        _URLParts.split(rest, name)  # refuses what the drivers would read differently
        return cls(f"{normal}://{rest}")

    @property
    def target_session_attrs(self) -> str | None:
        """The URL's own target_session_attrs, if it names one (Settings.session_attrs
        applies the default)."""
        if self.value is None:
            return None
        return self._parts().param("target_session_attrs")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Its password (and sslpassword), as written and decoded: what a log must never show."""
        if self.value is None:
            return ()
        parts = self._parts()
        found: list[str] = []
        if parts.userinfo is not None and ":" in parts.userinfo:
            found.append(parts.userinfo.partition(":")[2])
        found += [v for k, v in parts.query if unquote(k) in _SECRET_PARAMS]
        return tuple(dict.fromkeys(form for raw in found for form in (raw, unquote(raw)) if form))

    @property
    def socket_options(self) -> SocketOptions:
        """The URL's keepalives, keepalives_idle, keepalives_interval, keepalives_count and
        tcp_user_timeout; our defaults for those it does not name."""
        if self.value is None:
            return SocketOptions()
        parts = self._parts()
        given = {key: parts.param(key) for key in SOCKET_PARAMS}
        defaults = SocketOptions().libpq()
        value = {key: int(given[key] or defaults[key]) for key in SOCKET_PARAMS}
        return SocketOptions(
            keepalives=value["keepalives"] != 0,
            idle=value["keepalives_idle"],
            interval=value["keepalives_interval"],
            count=value["keepalives_count"],
            user_timeout_ms=value["tcp_user_timeout"],
        )

    @property
    def has_password(self) -> bool:
        """The URL carries a password (in its user-info or a password= parameter)."""
        if self.value is None:
            return False
        parts = self._parts()
        in_userinfo = parts.userinfo is not None and ":" in parts.userinfo
        return in_userinfo or parts.param("password") is not None

    def for_asyncpg(self) -> DatabaseURL:
        """The URL without libpq's TCP parameters (SOCKET_PARAMS), which asyncpg would
        send to the server as settings; `socket_options` carries their values."""
        if self.value is None:
            return self
        parts = self._parts()
        query = tuple((k, v) for k, v in parts.query if unquote(k) not in SOCKET_PARAMS)
        if query == parts.query:
            return self
        return replace(self, value=replace(parts, query=query).unsplit(parts.userinfo))

    def param(self, key: str) -> str | None:
        """The URL's query parameter `key`, decoded; None if it has none."""
        return None if self.value is None else self._parts().param(key)

    def _parts(self) -> _URLParts:
        assert self.value is not None
        return _URLParts.split(self.value.partition("://")[2], "DATABASE_URL")

    def per_host(self) -> tuple[str, ...]:
        """One URL per host of a host list, in order; a single host: the URL itself.

        The service connects host by host with DB_CONNECT_TIMEOUT each, as libpq does
        (asyncpg alone spends one timeout on the whole list).
        """
        if self.value is None:
            return ()
        parts = self._parts()
        hosts = parts.hosts.split(",") if parts.hosts else []
        if len(hosts) > 1:
            return tuple(replace(parts, hosts=host).unsplit(parts.userinfo) for host in hosts)
        names = (parts.param("host") or "").split(",")
        if len(names) < 2:
            return (self.value,)
        ports = (parts.param("port") or "").split(",")
        ports = ports * len(names) if len(ports) == 1 else ports
        rest = tuple((k, v) for k, v in parts.query if unquote(k) not in ("host", "port"))
        urls = []
        for name, port in zip(names, ports, strict=True):
            query = rest + (("host", quote(name, safe="")),) + ((("port", port),) if port else ())
            urls.append(replace(parts, query=query).unsplit(parts.userinfo))
        return tuple(urls)

    def with_database(self, database: str) -> DatabaseURL:
        """The same server and credentials, another database (tests, bench)."""
        if self.value is None:
            return replace(self, value=f"postgresql:///{quote(database)}")
        parts = replace(self._parts(), path=quote(database))
        return replace(self, value=parts.unsplit(parts.userinfo))

    @property
    def redacted(self) -> str:
        """Where we connect, for logs: user@hosts/db, never the password."""
        if self.value is None:
            env = os.environ
            host = env.get("PGHOST", "localhost")
            port = env.get("PGPORT", "5432")
            user = env.get("PGUSER", "")
            db = env.get("PGDATABASE", user)
            who = f"{user}@" if user else ""
            return f"postgresql://{who}{host}:{port}/{db} (libpq defaults)"
        try:
            return self._parts().redacted()
        except SettingsError:  # built without parse(): print nothing of it
            return "postgresql://*** (not a valid URL)"

    def __repr__(self) -> str:
        return f"DatabaseURL({self.redacted!r})"

    __str__ = __repr__


# One message for every URL whose user-info the drivers would cut in different places:
# libpq takes the user-info up to the first '@' before any '/', asyncpg up to the first
# '@' before any '/', '?' or '#', urllib up to the last '@' of that span.
_AMBIGUOUS = (
    "cannot tell the password from the host: percent-encode @ / ? # % in the user name, "
    "the password and parameter values (%40 %2F %3F %23 %25)"
)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%00")
_HOST_AND_PORT = re.compile(r"\[[0-9A-Fa-f:.]+(?:%25[^\]]+)?\](?::(.*))?|[^:\[\]]*(?::(.*))?")
_SECRET_PARAMS = {"password", "sslpassword"}
# Linux's bounds (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT): a larger value
# would fail every connect, so it is refused at start.
_SOCKET_PARAM_RANGES = {
    "keepalives": ("0 or 1", 1),
    "keepalives_idle": ("seconds", 32767),
    "keepalives_interval": ("seconds", 32767),
    "keepalives_count": ("probes", 127),
    "tcp_user_timeout": ("milliseconds", 2**31 - 1),
}


@dataclass(frozen=True)
class _URLParts:
    """The part of a URL after `scheme://`, split once, as libpq and asyncpg both read it.

    Parts keep their percent-encoding; `redacted()` rebuilds the URL from the same
    split the checks ran on, so what we print is what the drivers connect to.
    """

    userinfo: str | None  # None: no '@'
    hosts: str  # h1:5432,[::1]:5433 (may be empty: libpq defaults, or host= below)
    path: str | None  # the database; None: no '/'
    query: tuple[tuple[str, str], ...]

    @classmethod
    def split(cls, rest: str, name: str) -> _URLParts:
        at = rest.find("@")
        if "#" in rest or (at >= 0 and (rest.count("@") > 1 or _has_any(rest[:at], "/?"))):
            raise SettingsError(f"{name}: {_AMBIGUOUS}")
        if _BAD_ESCAPE.search(rest):
            raise SettingsError(
                f"{name}: a '%' that does not start an escape such as %40 (write % as %25)"
            )
        userinfo, _, rest = rest.rpartition("@") if at >= 0 else (None, "", rest)
        location, _, query = rest.partition("?")
        hosts, slash, path = location.partition("/")
        parts = cls(userinfo, hosts, path if slash else None, _query(query, name))
        parts._check(name)
        return parts

    def param(self, key: str) -> str | None:
        """The last value of a query parameter, decoded (as both drivers take the last)."""
        values = [unquote(v) for k, v in self.query if unquote(k) == key]
        return values[-1] if values else None

    def _check(self, name: str) -> None:
        hosts = self.hosts.split(",") if self.hosts else []
        if len(hosts) > 1 and not all(hosts):
            raise SettingsError(f"{name}: an empty host in the host list")
        ports = []
        for host in hosts:
            match = _HOST_AND_PORT.fullmatch(host)
            if match is None:
                raise SettingsError(f"{name}: a host in brackets must be an IPv6 address")
            ports.append(match.group(1) or match.group(2) or "")
        host_param, port_param = self.param("host"), self.param("port")
        if hosts and (host_param is not None or port_param is not None):
            raise SettingsError(
                f"{name}: hosts and ports go either in the host part (h1:5432,h2:5432) "
                "or in host= and port= parameters, not both"
            )
        if port_param is not None:
            ports = port_param.split(",")
            count = len(host_param.split(",")) if host_param else 1
            if len(ports) not in (1, count):
                raise SettingsError(f"{name}: {len(ports)} ports for {count} hosts")
        if not all(p == "" or (p.isdigit() and 1 <= int(p) <= 65535) for p in ports):
            raise SettingsError(f"{name}: the port is not a number from 1 to 65535")
        if self.param("connect_timeout") is not None:
            # asyncpg sends parameters it does not know to the server as settings, and
            # the server refuses this one: use the setting both drivers get.
            raise SettingsError(f"{name}: connect_timeout in the URL; use DB_CONNECT_TIMEOUT")
        for key, (unit, maximum) in _SOCKET_PARAM_RANGES.items():
            value = self.param(key)
            if value is not None and not (value.isascii() and value.isdigit()):
                raise SettingsError(f"{name}: {key}={value!r} is not a whole number ({unit})")
            if value is not None and int(value) > maximum:
                raise SettingsError(f"{name}: {key}={value} is out of range (0 to {maximum})")
        attrs = self.param("target_session_attrs")
        if attrs is not None and attrs not in TARGET_SESSION_ATTRS:
            raise SettingsError(
                f"{name}: target_session_attrs={attrs!r} is not one of "
                f"{', '.join(TARGET_SESSION_ATTRS)}"
            )

    def unsplit(self, userinfo: str | None) -> str:
        url = "postgresql://" + ("" if userinfo is None else userinfo + "@") + self.hosts
        if self.path is not None:
            url += "/" + self.path
        if self.query:
            url += "?" + "&".join(f"{k}={v}" for k, v in self.query)
        return url

    def redacted(self) -> str:
        userinfo = self.userinfo
        if userinfo is not None:
            user, colon, _ = userinfo.partition(":")
            userinfo = f"{user}:***" if colon else user
        query = tuple((k, "***" if unquote(k) in _SECRET_PARAMS else v) for k, v in self.query)
        return replace(self, query=query).unsplit(userinfo)


def _has_any(text: str, characters: str) -> bool:
    return any(c in text for c in characters)


def _query(query: str, name: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in query.split("&") if query else ():
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise SettingsError(f"{name}: a query parameter that is not name=value")
        pairs.append((key, value))
    return tuple(pairs)
