"""`python -m service`: operator mistakes are one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service import cli

SECRET = "do-not-print-me"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**environ, **env},
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
    assert capsys.readouterr().err == "error: WORKERS: -3 is out of range (must be >= 1)\n"


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
            "service.app:nope",
            'error: --app service.app:nope: Attribute "nope" not found in module "service.app".\n',
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
