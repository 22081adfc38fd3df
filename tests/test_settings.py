"""Configuration: DATABASE_URL forms, libpq defaults, `.env`, validation, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from service.settings import DEV_ENV_FILE, DatabaseURL, Settings, SettingsError

SECRET = "s3cr3t-Pa55"


def from_env(**env: str) -> Settings:
    return Settings.from_env(environ=env, env_file=None)


# -- the original design's configuration class: URL from env, default, async driver -----


def test_url_comes_from_the_environment() -> None:
    settings = from_env(DATABASE_URL="postgresql://app@db.internal:6432/orders")
    assert settings.database_url.value == "postgresql://app@db.internal:6432/orders"


def test_unset_url_means_libpq_defaults() -> None:
    settings = from_env()
    assert settings.database_url.value is None
    assert settings.database_url.redacted.endswith("(libpq defaults)")


@pytest.mark.parametrize(
    "scheme",
    ["postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2"],
)
def test_driver_schemes_are_normalised(scheme: str) -> None:
    url = from_env(DATABASE_URL=f"{scheme}://u@h:5432/d?sslmode=require").database_url
    assert url.value == "postgresql://u@h:5432/d?sslmode=require"
    # What the migrate command's driver (libpq) reads from it.
    assert conninfo_to_dict(url.value) == {
        "user": "u", "host": "h", "port": "5432", "dbname": "d", "sslmode": "require"
    }  # fmt: skip


def test_unset_url_names_the_libpq_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "pg.example")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGUSER", "svc")
    monkeypatch.setenv("PGPASSWORD", SECRET)
    text = DatabaseURL(None).redacted
    assert "svc@pg.example:6543/svc" in text
    assert SECRET not in text


# -- `.env` ------------------------------------------------------------------------------


def test_env_file_fills_gaps_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DB_POOL_MAX_SIZE=7\nPORT=9000\nLOG_FORMAT=json\n")
    settings = Settings.from_env(environ={"PORT": "9100"}, env_file=env_file)
    assert settings.pool_max_size == 7
    assert settings.log_format == "json"
    assert settings.port == 9100


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b'DB_POOL_MAX_SIZE=7\nPORT="9000\nLOG_FORMAT=json\n', 2),  # unterminated quote
        (b"PORT=9000\n\nDATABASE_URL=postgresql://app:pw\xe9@db/app\n", 3),  # Latin-1, not UTF-8
    ],
)
def test_a_broken_env_file_is_refused_naming_the_line(
    tmp_path: Path, content: bytes, line: int
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(content)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(environ={}, env_file=env_file)
    assert str(caught.value).startswith(f"{env_file}: line {line} is not ")
    assert "9000" not in str(caught.value) and "pw" not in str(caught.value)


def test_env_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"\xef\xbb\xbfPORT=9001\n")
    assert Settings.from_env(environ={}, env_file=env_file).port == 9001


def test_the_dev_file_comes_after_the_environment_and_env(tmp_path: Path) -> None:
    """scripts/dev's `.data/dev.env`, beside `.env`: what neither of them sets."""
    dev_file = tmp_path / DEV_ENV_FILE
    dev_file.parent.mkdir()
    dev_file.write_text("DATABASE_URL=postgresql://postgres@127.0.0.1:5999/postgres\nPORT=9001\n")
    env_file = tmp_path / ".env"
    assert Settings.from_env({}, env_file=env_file).database_url.value == (
        "postgresql://postgres@127.0.0.1:5999/postgres"
    )
    env_file.write_text("PORT=9002\nDATABASE_URL=\n")  # empty: the dev file's still applies
    settings = Settings.from_env({}, env_file=env_file)
    assert (settings.port, settings.database_url.value) == (
        9002,
        "postgresql://postgres@127.0.0.1:5999/postgres",
    )
    env_file.write_text("DATABASE_URL=postgresql://app@db/app\n")
    assert Settings.from_env({}, env_file=env_file).database_url.value == "postgresql://app@db/app"
    wins = Settings.from_env({"DATABASE_URL": "postgresql://env@db/env"}, env_file=env_file)
    assert wins.database_url.value == "postgresql://env@db/env"
    assert Settings.from_env({}, env_file=None).database_url.value is None  # environment alone


def test_an_empty_variable_is_the_same_as_an_unset_one(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9005\nWORKERS=\n")
    settings = Settings.from_env(environ={"PORT": "", "WORKERS": " "}, env_file=env_file)
    assert settings.port == 9005  # empty in the environment: `.env` applies
    assert settings.workers == 1  # empty in both: the default
    assert from_env(PORT="").port == 8000


def test_defaults_are_production_shaped() -> None:
    settings = from_env()
    assert (settings.pool_min_size, settings.pool_max_size) == (2, 30)
    assert settings.pool_max_lifetime == 3600
    assert settings.ready_timeout < 1  # below Kubernetes' default 1 s probe timeout
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.http_keepalive_timeout > 60  # above AWS ALB's default idle timeout
    assert settings.idle_in_transaction_timeout == 60
    assert (settings.hold_warning_ms, settings.password_file) == (0, None)  # off


def test_every_variable_is_read() -> None:
    settings = from_env(
        DB_POOL_MIN_SIZE="0",
        DB_POOL_MAX_SIZE="1000",
        DB_POOL_MAX_LIFETIME="60",
        DB_POOL_MAX_INACTIVE_LIFETIME="0",
        DB_CONNECT_TIMEOUT="1.5",
        DB_COMMAND_TIMEOUT="9",
        DB_ACQUIRE_TIMEOUT="2",
        DB_STATEMENT_CACHE_SIZE="0",
        DB_READY_TIMEOUT="0.3",
        DB_CLOSE_TIMEOUT="4",
        DB_MIGRATE_ON_STARTUP="yes",
        MIGRATE_LOCK_TIMEOUT="0",
        HOST="0.0.0.0",
        PORT="8080",
        WORKERS="64",
        SHUTDOWN_TIMEOUT="0.5",
        LOG_LEVEL="DEBUG",
        LOG_FORMAT="JSON",
        ACCESS_LOG="off",
        DATABASE_REPLICA_URL="postgresql://app@replica:5432/orders",
        DB_REPLICA_MAX_LAG="2.5",
        DB_IDLE_IN_TRANSACTION_TIMEOUT="0",
        DB_HOLD_WARNING_MS="250",
        HTTP_KEEPALIVE_TIMEOUT="650",
    )
    assert settings == Settings(
        replica_url=DatabaseURL.parse("postgresql://app@replica:5432/orders"),
        replica_max_lag=2.5,
        pool_min_size=0,
        pool_max_size=1000,
        pool_max_lifetime=60,
        pool_max_inactive_lifetime=0,
        connect_timeout=1.5,
        command_timeout=9,
        acquire_timeout=2,
        statement_cache_size=0,
        ready_timeout=0.3,
        close_timeout=4,
        migrate_on_startup=True,
        migrate_lock_timeout=0,
        host="0.0.0.0",
        port=8080,
        workers=64,
        shutdown_timeout=0.5,
        log_level="debug",
        log_format="json",
        access_log=False,
        idle_in_transaction_timeout=0,
        hold_warning_ms=250,
        http_keepalive_timeout=650,
    )


# -- refusals: one line naming the variable ----------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://u:pw@h/d"}, "DATABASE_URL: scheme 'mysql' is not PostgreSQL"),
        ({"DATABASE_URL": "just-a-hostname"}, "DATABASE_URL: not a URL"),
        ({"DATABASE_URL": "postgresql://u:pw@h:99999/d"}, "DATABASE_URL: the port is not"),
        ({"DATABASE_URL": "postgresql://u:pw@h:abc/d"}, "DATABASE_URL: the port is not"),
        ({"DB_POOL_MAX_SIZE": "many"}, "DB_POOL_MAX_SIZE: 'many' is not a whole number"),
        ({"DB_POOL_MAX_SIZE": "0"}, "DB_POOL_MAX_SIZE: 0 is out of range"),
        ({"DB_POOL_MIN_SIZE": "-1"}, "DB_POOL_MIN_SIZE: -1 is out of range"),
        ({"DB_POOL_MIN_SIZE": "9", "DB_POOL_MAX_SIZE": "3"}, "DB_POOL_MIN_SIZE: 9 is larger"),
        ({"DB_READY_TIMEOUT": "-1"}, "DB_READY_TIMEOUT: '-1' is out of range"),
        ({"DB_READY_TIMEOUT": "0"}, "DB_READY_TIMEOUT: '0' is out of range"),
        ({"DB_CONNECT_TIMEOUT": "soon"}, "DB_CONNECT_TIMEOUT: 'soon' is not a number"),
        ({"DB_CLOSE_TIMEOUT": "nan"}, "DB_CLOSE_TIMEOUT: 'nan' is out of range"),
        ({"PORT": "70000"}, "PORT: 70000 is out of range"),
        ({"PORT": "http"}, "PORT: 'http' is not a whole number"),
        ({"WORKERS": "0"}, "WORKERS: 0 is out of range"),
        ({"WORKERS": "65"}, "WORKERS: 65 is out of range (must be from 1 to 64)"),
        (
            {"DB_POOL_MAX_SIZE": "99999999999"},
            "DB_POOL_MAX_SIZE: 99999999999 is out of range (must be from 1 to 1000)",
        ),
        (
            {"DB_POOL_MIN_SIZE": "1001", "DB_POOL_MAX_SIZE": "1000"},
            "DB_POOL_MIN_SIZE: 1001 is out of range (must be from 0 to 1000)",
        ),
        (
            {"DB_STATEMENT_CACHE_SIZE": "10001"},
            "DB_STATEMENT_CACHE_SIZE: 10001 is out of range (must be from 0 to 10000)",
        ),
        ({"HOST": "local host"}, "HOST: 'local host' is not a host"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL: 'loud' is not one of"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: 'xml' is not one of text, json"),
        ({"ACCESS_LOG": "maybe"}, "ACCESS_LOG: 'maybe' is not a boolean"),
        ({"DB_MIGRATE_ON_STARTUP": "2"}, "DB_MIGRATE_ON_STARTUP: '2' is not a boolean"),
        (
            {"DATABASE_REPLICA_URL": "mysql://u:pw@h/d"},
            "DATABASE_REPLICA_URL: scheme 'mysql' is not PostgreSQL",
        ),
        (
            {"DATABASE_REPLICA_URL": "postgresql://u:pw@r1:5432,r2:x/d"},
            "DATABASE_REPLICA_URL: the port is not",
        ),
        ({"DB_REPLICA_MAX_LAG": "0"}, "DB_REPLICA_MAX_LAG: '0' is out of range"),
        ({"DB_REPLICA_MAX_LAG": "a while"}, "DB_REPLICA_MAX_LAG: 'a while' is not a number"),
        ({"HTTP_KEEPALIVE_TIMEOUT": "0"}, "HTTP_KEEPALIVE_TIMEOUT: '0' is out of range"),
        ({"DB_HOLD_WARNING_MS": "soon"}, "DB_HOLD_WARNING_MS: 'soon' is not a number"),
        (
            {"DB_IDLE_IN_TRANSACTION_TIMEOUT": "-1"},
            "DB_IDLE_IN_TRANSACTION_TIMEOUT: '-1' is out of range (seconds, must be >= 0)",
        ),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env(**env)
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert "pw" not in text  # a refused URL is never echoed back


# -- the password never shows ----------------------------------------------------------


def test_password_is_redacted_in_repr_str_and_logs_form() -> None:
    settings = from_env(DATABASE_URL=f"postgresql://app:{SECRET}@db:5432/orders?sslmode=require")
    for text in (repr(settings), str(settings), settings.database_url.redacted):
        assert SECRET not in text
    assert "app:***@db:5432/orders?sslmode=require" in settings.database_url.redacted


def test_password_in_query_string_is_redacted() -> None:
    url = DatabaseURL.parse(f"postgresql://db/orders?user=app&password={SECRET}")
    assert SECRET not in url.redacted
    assert "password=***" in url.redacted


def test_with_database_keeps_server_and_credentials() -> None:
    url = DatabaseURL.parse(f"postgresql://app:{SECRET}@db:5432/orders?sslmode=disable")
    assert url.with_database("other").value == (
        f"postgresql://app:{SECRET}@db:5432/other?sslmode=disable"
    )
    assert DatabaseURL(None).with_database("x").value == "postgresql:///x"


# -- read replicas ---------------------------------------------------------------------


def test_no_replica_unless_configured() -> None:
    settings = from_env()
    assert settings.replica_url is None
    assert settings.replica_max_lag == 5.0


def test_replica_url_prefers_a_standby_unless_it_says_otherwise() -> None:
    settings = from_env(
        DATABASE_URL="postgresql://app:pw@db1:5432,db2:5432/orders",
        DATABASE_REPLICA_URL=f"postgresql://app:{SECRET}@db2:5432,db3:5432/orders",
    )
    assert settings.session_attrs == "read-write"
    assert settings.replica_url is not None
    assert SECRET not in repr(settings)
    replica = settings.for_replica()
    assert replica.database_url == settings.replica_url
    assert replica.session_attrs == "prefer-standby"
    assert (replica.replica_url, replica.migrate_on_startup) == (None, False)
    own = from_env(DATABASE_REPLICA_URL="postgresql://r1,r2/d?target_session_attrs=standby")
    assert own.replica_url is not None
    assert own.for_replica().session_attrs == "standby"


def test_every_setting_is_documented_where_an_operator_looks() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    operations = (root / "docs" / "operations.md").read_text()
    example = (root / ".env.example").read_text()
    for variable in Settings.variables():
        assert f"| `{variable}` |" in readme, f"{variable}: no row in the README's settings table"
        assert f"| `{variable}` |" in operations, f"{variable}: no row in docs/operations.md"
        assert f"{variable}=" in example, f"{variable}: not in .env.example"


def test_the_example_env_file_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    assert Settings.from_env({}, env_file=example).database_url.redacted.startswith(
        "postgresql://app:***@"
    )
