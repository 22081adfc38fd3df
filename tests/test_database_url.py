"""DATABASE_URL: libpq's forms (host lists, IPv6, host=/port=), ambiguous user-info refused,
redaction from the same split, target_session_attrs reaching both drivers."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest

from service import cli
from service.database_url import SocketOptions
from service.db import Database
from service.db.opening import pool_arguments
from service.settings import DatabaseURL, Settings, SettingsError
from tests.support.apps import test_settings
from tests.support.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "secret"

# Issue 13: unencoded ? # / @ in a password made the drivers read part of it as the host,
# port or database, and the misread URL was printed.
AMBIGUOUS = [
    f"postgresql://u:4242?{SECRET}@db.internal/app",
    f"postgresql://u:4242#{SECRET}@db.internal/app",
    f"postgresql://u:4242/{SECRET}@db.internal/app",
    f"postgresql://u:p@ss@{SECRET}@db.internal/app",
    f"postgresql://db.internal?user=u&password=p@{SECRET}",
]
LIBPQ_TCP = (
    "keepalives=1&keepalives_idle=30&keepalives_interval=10&keepalives_count=3"
    "&tcp_user_timeout=10000"
)
ENCODE = (
    "cannot tell the password from the host: percent-encode @ / ? # % in the user name, "
    "the password and parameter values (%40 %2F %3F %23 %25)"
)


def from_env(**env: str) -> Settings:
    return Settings.from_env(environ=env, env_file=None)


# -- refused: one line, naming the setting, no part of the user-info --------------------


@pytest.mark.parametrize("url", AMBIGUOUS)
def test_an_unencoded_password_is_refused_without_printing_it(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(DATABASE_URL=url)
    assert str(caught.value) == f"DATABASE_URL: {ENCODE}"


def test_the_same_password_percent_encoded_is_read_exactly() -> None:
    url = DatabaseURL.parse("postgresql://u:p%40ss%3F%2F%23x@db.internal:5433/app")
    assert url.redacted == "postgresql://u:***@db.internal:5433/app"
    assert psycopg.conninfo.conninfo_to_dict(url.value or "")["password"] == "p@ss?/#x"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:50%off@h/app", "a '%' that does not start an escape such as %40"),
        ("postgresql://u:pw@h1,,h2/app", "an empty host in the host list"),
        ("postgresql://u:pw@[localhost]:5432/app", "a host in brackets must be an IPv6 address"),
        ("postgresql://u:pw@h1:5432,h2:x/app", "the port is not a number from 1 to 65535"),
        ("postgresql:///app?host=h1&port=70000", "the port is not a number from 1 to 65535"),
        ("postgresql:///app?host=h1,h2,h3&port=1,2", "2 ports for 3 hosts"),
        ("postgresql://h1/app?host=h2", "hosts and ports go either in the host part"),
        ("postgresql://h1/app?port=5433", "hosts and ports go either in the host part"),
        ("postgresql://h/app?sslmode", "a query parameter that is not name=value"),
        (
            "postgresql://h/app?connect_timeout=3",
            "connect_timeout in the URL; use DB_CONNECT_TIMEOUT",
        ),
        ("postgresql://h/app?keepalives_idle=soon", "keepalives_idle='soon' is not a whole number"),
        ("postgresql://h/app?keepalives=yes", "keepalives='yes' is not a whole number (0 or 1)"),
        ("postgresql://h/app?tcp_user_timeout=-1", "tcp_user_timeout='-1' is not a whole number"),
        ("postgresql://h/app?keepalives_count=128", "keepalives_count=128 is out of range"),
        ("postgresql://h/app?keepalives_idle=40000", "keepalives_idle=40000 is out of range"),
        (
            "postgresql://h/app?target_session_attrs=master",
            "target_session_attrs='master' is not one of read-write, any, primary, read-only, "
            "standby, prefer-standby",
        ),
    ],
)
def test_malformed_urls_are_refused_in_one_line(url: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(DATABASE_URL=url)
    assert str(caught.value).startswith(f"DATABASE_URL: {message}")
    assert "pw" not in str(caught.value) and "off" not in str(caught.value)


def migrate(
    cwd: Path,
    *args: str,
    drop: Callable[[str], bool] = lambda name: name == "DATABASE_URL",
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m service migrate ARGS` in `cwd` (no .env there), environment variables
    `drop` names removed and `env` added."""
    kept = {k: v for k, v in os.environ.items() if not drop(k)}
    return subprocess.run(
        [sys.executable, "-m", "service", "migrate", *args],
        env={**kept, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("url", AMBIGUOUS)
def test_migrate_list_refuses_an_unencoded_password_in_one_line(url: str, tmp_path: Path) -> None:
    result = migrate(tmp_path, "list", drop=lambda k: k.startswith("PG"), DATABASE_URL=url)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: DATABASE_URL: {ENCODE}\n"


@pytest.mark.parametrize("url", AMBIGUOUS)
def test_serve_refuses_an_unencoded_password_before_it_logs_anything(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve"]) == 2  # before uvicorn starts, so before db.start target=…
    assert capsys.readouterr() == ("", f"error: DATABASE_URL: {ENCODE}\n")


def test_migrate_database_option_is_named_when_refused(tmp_path: Path) -> None:
    result = migrate(tmp_path, "list", "--database", AMBIGUOUS[0])
    assert (result.returncode, result.stderr) == (2, f"error: --database: {ENCODE}\n")


# -- libpq's forms, redacted from the same split -----------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            f"postgresql://app:{SECRET}@db1:5432,db2:5433/app?target_session_attrs=read-write",
            "postgresql://app:***@db1:5432,db2:5433/app?target_session_attrs=read-write",
        ),
        (f"postgres://app:{SECRET}@[::1]:5432/app", "postgresql://app:***@[::1]:5432/app"),
        (
            f"postgresql://app:{SECRET}@[fe80::1%25eth0]:5432,db2/app",
            "postgresql://app:***@[fe80::1%25eth0]:5432,db2/app",
        ),
        (
            f"postgresql:///app?host=db1,db2&port=5432,5433&user=app&password={SECRET}",
            "postgresql:///app?host=db1,db2&port=5432,5433&user=app&password=***",
        ),
        (
            f"postgresql://app:{SECRET}@/app?host=/run/postgresql",
            "postgresql://app:***@/app?host=/run/postgresql",
        ),
        (f"postgresql://:{SECRET}@db1/app", "postgresql://:***@db1/app"),
    ],
)
def test_libpq_forms_are_accepted_and_redacted(url: str, redacted: str) -> None:
    settings = from_env(DATABASE_URL=url)
    assert settings.database_url.redacted == redacted
    assert SECRET not in repr(settings)
    moved = settings.database_url.with_database("other")
    assert moved.redacted == re.sub(r"/app(?=\?|$)", "/other", redacted)


# -- libpq's TCP parameters: honoured with libpq's meaning, never sent as settings ------


def test_keepalives_and_the_user_timeout_default_on() -> None:
    assert from_env().database_url.socket_options == SocketOptions(
        keepalives=True, idle=30, interval=10, count=3, user_timeout_ms=10_000
    )


def test_the_url_s_tcp_parameters_win_and_are_kept_from_asyncpg() -> None:
    url = DatabaseURL.parse(
        "postgresql://u:pw@db1,db2/app?sslmode=require&keepalives_idle=5&keepalives_count=0"
        "&tcp_user_timeout=2500&application_name=x"
    )
    assert url.socket_options == SocketOptions(idle=5, count=0, user_timeout_ms=2500)
    stripped = url.for_asyncpg()
    assert stripped.value == "postgresql://u:pw@db1,db2/app?sslmode=require&application_name=x"
    assert stripped.per_host() == (
        "postgresql://u:pw@db1/app?sslmode=require&application_name=x",
        "postgresql://u:pw@db2/app?sslmode=require&application_name=x",
    )
    assert DatabaseURL.parse("postgresql://h/app?keepalives=0").socket_options.keepalives is False
    assert pool_arguments(test_settings(url.value))["dsn"] == stripped.value


async def test_a_url_with_libpq_keepalive_parameters_becomes_ready(database_url: str) -> None:
    """As cloud providers' guides write them: asyncpg alone sends them to the server as
    settings, which answers FATAL unrecognized configuration parameter, forever."""
    url = f"{database_url}?{LIBPQ_TCP}"
    async with Database(test_settings(url)) as database:
        assert await database.wait_connected(10)
        assert await database.check() == "connected"


def test_migrate_takes_the_same_url(database_url: str, tmp_path: Path) -> None:
    result = migrate(tmp_path, "list", DATABASE_URL=f"{database_url}?{LIBPQ_TCP}")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("applied  0001_")


# -- target_session_attrs: the URL's, else DB_TARGET_SESSION_ATTRS (default read-write) --


def test_target_session_attrs_default_setting_and_url() -> None:
    assert from_env().session_attrs == "read-write"
    assert from_env(DB_TARGET_SESSION_ATTRS="Any").session_attrs == "any"
    url = "postgresql://db1,db2/app?target_session_attrs=prefer-standby"
    settings = from_env(DATABASE_URL=url, DB_TARGET_SESSION_ATTRS="any")
    assert settings.session_attrs == "prefer-standby"
    assert pool_arguments(settings)["target_session_attrs"] == "prefer-standby"
    with pytest.raises(SettingsError) as caught:
        from_env(DB_TARGET_SESSION_ATTRS="master")
    assert str(caught.value).startswith("DB_TARGET_SESSION_ATTRS: 'master' is not one of")


# -- against a real server -------------------------------------------------------------


def host_list(database_url: str, *, first: str) -> str:
    """The test database's URL with `first` (a host that refuses) put before its host."""
    parts = urlsplit(database_url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if not hostport:
        pytest.skip("the test server is reached through libpq defaults, not a host")
    who = f"{userinfo}@" if userinfo else ""
    return parts._replace(netloc=f"{who}{first},{hostport}").geturl()


def host_parameters(database_url: str, *, first: str) -> str:
    parts = urlsplit(database_url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host, _, port = hostport.rpartition(":")
    if not host or not port:
        pytest.skip("the test server's URL names no host and port")
    first_host, _, first_port = first.rpartition(":")
    query = f"host={first_host},{host}&port={first_port},{port}"
    who = f"{userinfo}@" if userinfo else ""
    return parts._replace(netloc=who, query=query).geturl()


def refusing() -> list[str]:
    return [f"127.0.0.1:{free_port()}", f"[::1]:{free_port()}"]


@pytest.mark.parametrize("form", [host_list, host_parameters])
@pytest.mark.parametrize("first", refusing(), ids=["ipv4", "ipv6"])
async def test_the_pool_skips_a_host_that_refuses(
    database_url: str, form, first: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = form(database_url, first=first)
    caplog.set_level(logging.INFO, logger="service.db")
    real_port = urlsplit(database_url).port
    async with Database(test_settings(url)) as database:
        assert await database.wait_connected(10)
        async with database.connection() as con:
            assert await con.fetchval("SELECT inet_server_port()") == real_port
    started = [r.getMessage() for r in caplog.records if "db.start" in r.getMessage()]
    assert started == [f"db.start target={DatabaseURL.parse(url).redacted}"]


@pytest.mark.parametrize("form", [host_list, host_parameters])
async def test_each_host_gets_its_own_connect_timeout(database_url: str, form) -> None:
    """A first host that accepts and never answers (a hung server, a black hole) used to
    take asyncpg's whole timeout, so the second host was never tried."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes handshakes; nobody ever answers
        url = form(database_url, first=f"127.0.0.1:{silent.getsockname()[1]}")
        settings = test_settings(url, connect_timeout=0.5, pool_min_size=1)
        async with Database(settings) as database:
            assert await database.wait_connected(15)
            async with database.connection() as con:
                assert await con.fetchval("SELECT 1") == 1
            assert database.state == "connected"


def test_a_host_list_splits_into_one_url_per_host() -> None:
    listed = DatabaseURL.parse("postgresql://u:pw@h1:5432,[::1]:5433/app?sslmode=require")
    assert listed.per_host() == (
        "postgresql://u:pw@h1:5432/app?sslmode=require",
        "postgresql://u:pw@[::1]:5433/app?sslmode=require",
    )
    params = DatabaseURL.parse("postgresql://u@/app?host=h1,h2&port=5432&sslmode=require")
    assert params.per_host() == (
        "postgresql://u@/app?sslmode=require&host=h1&port=5432",
        "postgresql://u@/app?sslmode=require&host=h2&port=5432",
    )
    single = DatabaseURL.parse("postgresql://u@h1/app")
    assert single.per_host() == (single.value,)


@pytest.mark.parametrize("form", [host_list, host_parameters])
def test_migrate_skips_a_host_that_refuses(database_url: str, form, tmp_path: Path) -> None:
    url = form(database_url, first=refusing()[0])
    result = migrate(tmp_path, "list", DATABASE_URL=url)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("applied  0001_")


@pytest.fixture
def read_only_url(database_url: str) -> str:
    """The test database, with every new session read-only (as on a standby, for libpq
    and asyncpg: both read default_transaction_read_only from the server's start-up report)."""
    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(database_url, autocommit=True) as con:
        con.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    return database_url


async def test_the_pool_honours_target_session_attrs(read_only_url: str) -> None:
    settings = test_settings(read_only_url)  # default: read-write
    with pytest.raises(asyncpg.TargetServerAttributeNotMatched):
        await asyncpg.connect(**_connect_arguments(settings))
    for accepting in (
        replace(settings, target_session_attrs="any"),
        test_settings(read_only_url + "?target_session_attrs=read-only"),
    ):
        con = await asyncpg.connect(**_connect_arguments(accepting))
        try:
            assert await con.fetchval("SHOW default_transaction_read_only") == "on"
        finally:
            await con.close()


def _connect_arguments(settings: Settings) -> dict[str, object]:
    """pool_arguments, without the pool's own (asyncpg.connect takes the rest)."""
    arguments = pool_arguments(settings)
    for pool_only in ("min_size", "max_size", "max_inactive_connection_lifetime"):
        del arguments[pool_only]
    return arguments


@pytest.mark.parametrize(("env", "returncode"), [({}, 2), ({"DB_TARGET_SESSION_ATTRS": "any"}, 0)])
def test_migrate_honours_target_session_attrs(
    read_only_url: str, tmp_path: Path, env: dict[str, str], returncode: int
) -> None:
    result = migrate(tmp_path, "list", DATABASE_URL=read_only_url, **env)
    assert result.returncode == returncode, result.stderr
    if returncode:
        assert result.stderr.startswith("error: cannot connect to ")
        assert "read-only" in result.stderr and result.stderr.count("\n") == 1


async def test_the_service_log_names_the_hosts_never_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    first, second = refusing()
    url = f"postgresql://app:{SECRET}@{first},{second}/app?password={SECRET}"
    async with Database(test_settings(url)) as database:
        assert not await database.wait_connected(0.5)  # nothing listens: it retries
    assert f"db.start target=postgresql://app:***@{first},{second}/app?password=***" in (
        caplog.text
    )
    assert SECRET not in caplog.text
