"""`python -m service`: operator mistakes are one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import cli
from service.web.http import BoundedHttpToolsProtocol

SECRET = "do-not-print-me"


ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**environ, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"PORT": "eighty"}, "error: PORT: 'eighty' is not a whole number\n"),
        (
            {"DATABASE_URL": f"mysql://root:{SECRET}@db/app"},
            "error: DATABASE_URL: scheme 'mysql' is not PostgreSQL (expected postgresql://, "
            "postgres://, postgresql+asyncpg:// or postgresql+psycopg://)\n",
        ),
        (
            {"DB_POOL_MIN_SIZE": "10", "DB_POOL_MAX_SIZE": "5"},
            "error: DB_POOL_MIN_SIZE: 10 is larger than DB_POOL_MAX_SIZE (5)\n",
        ),
    ],
)
def test_serve_refuses_a_bad_setting_in_one_line(env: dict[str, str], line: str) -> None:
    result = run("serve", **env)
    assert result.returncode == 2
    assert result.stderr == line
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_in_process_main_returns_2(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("WORKERS", "-3")
    monkeypatch.chdir(os.path.dirname(__file__))  # no .env here
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == "error: WORKERS: -3 is out of range (must be from 1 to 64)\n"


def test_unknown_command_is_a_usage_error() -> None:
    result = run("fly")
    assert result.returncode == 2
    assert "invalid choice: 'fly'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_migrate_command_loads_neither_the_app_nor_asyncpg() -> None:
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['service', 'migrate', '--help']\n"
        "try:\n"
        "    runpy.run_module('service', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'starlette', 'asyncpg', 'prometheus_client', 'uvicorn'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "usage:" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("app", "line"),
    [
        ("nosuch:app", 'error: --app nosuch:app: Could not import module "nosuch".\n'),
        (
            "service.web.app:nope",
            'error: --app service.web.app:nope: Attribute "nope" not found in module '
            '"service.web.app".\n',
        ),
        (
            "bad",
            'error: --app bad: Import string "bad" must be in format "<module>:<attribute>".\n',
        ),
    ],
)
def test_serve_refuses_an_app_it_cannot_import_in_one_line(app: str, line: str) -> None:
    result = run("serve", "--app", app)
    assert result.returncode == 2
    assert result.stderr == line


def test_serve_hands_uvicorn_a_fractional_shutdown_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    given: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: given.update(kwargs))
    monkeypatch.setenv("SHUTDOWN_TIMEOUT", "0.5")
    monkeypatch.chdir(tmp_path)  # no .env here
    assert cli.main(["serve"]) == 0
    assert given["timeout_graceful_shutdown"] == 0.5  # not int(0.5) == 0: cancel at once
    assert given["http"] is BoundedHttpToolsProtocol


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (f'PORT="9000\nDATABASE_URL=postgresql://app:{SECRET}@db/app\n'.encode(), 1),
        (f"PORT=9000\nDATABASE_URL=postgresql://app:{SECRET}\xe9@db/app\n".encode("latin-1"), 2),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["migrate", "list"]])
def test_a_broken_env_file_is_one_line_naming_it(
    tmp_path: Path, content: bytes, line: int, command: list[str]
) -> None:
    (tmp_path / ".env").write_bytes(content)
    result = run(*command, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: .env: line {line} is not ")
    assert result.stderr.count("\n") == 1
    assert SECRET not in result.stdout + result.stderr
