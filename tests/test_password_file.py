"""DATABASE_PASSWORD_FILE: read for every new connection, so a rotated password needs no
restart; one password from one place; neither password ever printed."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import cli, create_app, db_connection
from service.migrations import MigrationError, Target
from service.migrations.connection import connect
from service.password_file import PasswordFileError, read_password
from service.settings import Settings, SettingsError
from tests.support.apps import running, started, test_settings
from tests.support.cluster import Cluster
from tests.support.migrations import cli as migrate_cli

OLD = "Old-Secret-4711"
NEW = "New-Secret-0815"
BOTH = "both give a password: keep one"


def from_env(**env: str) -> Settings:
    return Settings.from_env(environ=env, env_file=None)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "db-password"
    path.write_text(OLD + "\n")  # as `echo` or a secret mount may write it
    return path


# -- at start: one line, exit 2, naming the variables, printing no password -------------


def test_the_file_s_password_is_read_without_its_line_end(password_file: Path) -> None:
    settings = from_env(DATABASE_PASSWORD_FILE=str(password_file))
    assert settings.password_file == password_file
    assert read_password(password_file) == OLD
    assert OLD not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", f"postgresql://app:{NEW}@db/app"),
        ("DATABASE_URL", f"postgresql://app@db/app?password={NEW}"),
        ("DATABASE_REPLICA_URL", f"postgresql://app:{NEW}@replica/app"),
    ],
)
def test_a_password_in_the_url_and_the_file_is_refused(
    variable: str, url: str, password_file: Path
) -> None:
    with pytest.raises(SettingsError) as refused:
        from_env(**{variable: url, "DATABASE_PASSWORD_FILE": str(password_file)})
    message = str(refused.value)
    assert message.startswith(f"{variable} and DATABASE_PASSWORD_FILE {BOTH}")
    assert "\n" not in message and NEW not in message and OLD not in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read {path} (No such file or directory)"),
        (b"\n", "{path} is empty"),
        (b"\xff\xfe", "{path} is not UTF-8 text"),
    ],
)
def test_a_file_that_gives_no_password_is_refused_at_start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    message: str,
) -> None:
    path = tmp_path / "db-password"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@127.0.0.1:1/app")
    expected = f"error: DATABASE_PASSWORD_FILE: {message.format(path=path)}\n"
    assert cli.main(["serve"]) == 2  # before uvicorn starts
    assert capsys.readouterr() == ("", expected)
    assert migrate_cli(capsys, "list") == (2, "", expected)


def test_the_migrate_command_refuses_a_database_option_with_a_password_too(
    password_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(password_file))
    url = f"postgresql://app:{NEW}@127.0.0.1:1/app"
    code, out, err = migrate_cli(capsys, "list", "--database", url)
    assert (code, out, err) == (2, "", f"error: --database and DATABASE_PASSWORD_FILE {BOTH}\n")


# -- rotation on a server that asks for the password (scram-sha-256) -------------------


@pytest.fixture
def secured(scratch_dir: Path) -> Iterator[Cluster]:
    # Under the suite's own directory, not pytest's tmp_path: a pytest starting meanwhile
    # (another xdist worker) makes pytest-of-<user> 0700 again, and the server's user loses
    # its way into the data directory.
    cluster = Cluster(scratch_dir / f"scram-{uuid.uuid4().hex[:8]}").init(password=OLD).start()
    yield cluster
    cluster.destroy()


def _rotate(cluster: Cluster) -> None:
    """The role's password changes from OLD to NEW (a rotation by the secret's owner)."""
    with psycopg.connect(cluster.url(password=OLD), autocommit=True) as admin:
        admin.execute(f"ALTER ROLE postgres PASSWORD '{NEW}'")


async def _ready_word(client: httpx.AsyncClient) -> str:
    response = await client.get("/api/v1/ready")
    word: str = response.json()["dependencies"]["db"]
    assert (response.status_code == 200) is (word == "connected")
    return word


@pytest.mark.fault
async def test_a_rotated_password_is_picked_up_without_a_restart(
    secured: Cluster, password_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = test_settings(secured.url(), password_file=password_file, pool_min_size=1)
    app = create_app(settings)
    seen: list[str] = [repr(settings)]
    async with running(app) as client:
        database = await started(app)
        assert await _ready_word(client) == "connected"
        # The role's password rotates; the file has not caught up yet.
        await asyncio.to_thread(_rotate, secured)
        await database.expire_connections()  # so the next check needs a new connection
        assert await _ready_word(client) == "unauthorized"
        seen.append((await client.get("/api/v1/ready")).text)
        password_file.write_text(NEW)  # the secret mount (or the Vault agent) catches up
        assert await _ready_word(client) == "connected"  # the next connection reads it
        # The file rotated away (unreadable): new connections cannot log in.
        password_file.unlink()
        await database.expire_connections()
        assert await _ready_word(client) == "unauthorized"
        password_file.write_text(NEW + "\n")
        assert await _ready_word(client) == "connected"
        seen.append((await client.get("/api/v1/ready")).text)
    seen.append(caplog.text)
    assert "db.password_file DATABASE_PASSWORD_FILE: cannot read" in caplog.text
    for text in seen:
        assert OLD not in text and NEW not in text


async def _one(request: Request) -> JSONResponse:
    async with db_connection(request) as con:
        return JSONResponse({"one": await con.fetchval("SELECT 1")})


@pytest.mark.fault
async def test_a_handler_s_new_connection_with_a_stale_file_answers_503_unauthorized(
    secured: Cluster, password_file: Path
) -> None:
    settings = test_settings(secured.url(), password_file=password_file, pool_min_size=1)
    app = create_app(settings, routes=[Route("/one", _one)])
    async with running(app) as client:
        database = await started(app)
        assert (await client.get("/one")).json() == {"one": 1}
        await asyncio.to_thread(_rotate, secured)
        await database.expire_connections()
        response = await client.get("/one")
    assert (response.status_code, response.json()) == (
        503,
        {"error": "database unavailable", "db": "unauthorized"},
    )


@pytest.mark.fault
def test_the_migrate_command_reads_the_file_at_each_connect(
    secured: Cluster,
    password_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(password_file))
    monkeypatch.setenv("DATABASE_URL", secured.url())
    code, out, err = migrate_cli(capsys, "list")
    assert (code, err) == (0, "")
    assert out.startswith("pending  0001_")
    _rotate(secured)
    code, out, err = migrate_cli(capsys, "list")
    assert (code, out) == (2, "")  # cannot connect: exit 2, as from every migrate command
    assert err.startswith("error: cannot connect to ") and err.count("\n") == 1
    assert "password authentication failed" in err
    password_file.write_text(NEW)
    assert migrate_cli(capsys, "list")[0] == 0
    assert OLD not in out + err and NEW not in out + err
    # Gone between two connects of one run: that connect fails in one line.
    password_file.unlink()
    with pytest.raises(MigrationError) as failed:
        connect(Target.from_settings(test_settings(secured.url(), password_file=password_file)))
    assert str(failed.value) == (
        f"cannot connect to {secured.url()}: "
        f"DATABASE_PASSWORD_FILE: cannot read {password_file} (No such file or directory)"
    )


def test_read_password_names_the_file_never_the_content(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(PasswordFileError) as unreadable:
        read_password(directory)
    assert (
        str(unreadable.value) == f"DATABASE_PASSWORD_FILE: cannot read {directory} (Is a directory)"
    )
