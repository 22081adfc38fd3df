"""The dev loop: scripts/dev serves a feature's app, its database keeps its port between runs
and is announced in `.data/dev.env`, where `migrate` in another terminal finds it
(service/testing/devdb.py, scripts/dev)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import DEV_ENV_FILE
from service.testing.cluster import free_port
from service.testing.devdb import HEADER, announce, stable_port, withdraw
from service.testing.polling import wait_until

ROOT = Path(__file__).resolve().parent.parent


def no_target_env(**extra: str) -> dict[str, str]:
    """The environment without DATABASE_URL or any PG* variable."""
    kept = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PG")}
    return {**kept, "PYTHONPATH": str(ROOT), **extra}


def test_the_port_is_kept_between_runs_and_moves_only_when_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "postgres"
    first = stable_port(data)
    assert (tmp_path / "postgres.port").read_text() == f"{first}\n"
    assert stable_port(data) == first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        taken.listen()
        moved = stable_port(data)
    assert moved != first
    assert capsys.readouterr().err == f"port {first} is taken: the dev database moves to another\n"
    assert stable_port(data) == moved


def test_the_announcement_is_withdrawn_only_by_its_own_run(tmp_path: Path) -> None:
    env_file = tmp_path / DEV_ENV_FILE
    announce(env_file, "postgresql://postgres@127.0.0.1:5001/postgres")
    announce(env_file, "postgresql://postgres@127.0.0.1:5002/postgres")  # a later run's
    withdraw(env_file, "postgresql://postgres@127.0.0.1:5001/postgres")
    assert env_file.read_text().endswith(
        "DATABASE_URL=postgresql://postgres@127.0.0.1:5002/postgres\n"
    )
    withdraw(env_file, "postgresql://postgres@127.0.0.1:5002/postgres")
    assert not env_file.exists()
    withdraw(env_file, "postgresql://postgres@127.0.0.1:5002/postgres")  # gone already: fine
    assert [p.name for p in env_file.parent.iterdir()] == []  # no partial file left


def test_the_dev_database_is_announced_while_it_runs_and_migrate_finds_it(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"  # where `migrate` runs: no DATABASE_URL, no .env
    checkout.mkdir()
    env_file = checkout / DEV_ENV_FILE
    command = [sys.executable, "-m", "service.testing.devdb", "--data", str(tmp_path / "pg")]
    command += ["--env-file", str(env_file)]
    urls = []
    for _ in range(2):
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env=no_target_env(), cwd=ROOT
        ) as devdb:
            try:
                assert devdb.stdout is not None
                url = devdb.stdout.readline().strip()
                urls.append(url)
                assert (
                    env_file.read_text() == HEADER.format(pid=devdb.pid) + f"DATABASE_URL={url}\n"
                )
                migrate = subprocess.run(
                    [sys.executable, "-m", "service", "migrate", "apply"],
                    cwd=checkout,
                    env=no_target_env(),
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert (migrate.returncode, migrate.stderr) == (0, "")
                assert migrate.stdout.splitlines()[0] == f"target {url}"
            finally:
                devdb.send_signal(signal.SIGTERM)
                assert devdb.wait(30) == 0
        assert not env_file.exists()  # gone with the database: nothing points at a dead port
    assert urls[0] == urls[1]  # the same port the second time
    assert urls[0].startswith("postgresql://postgres@127.0.0.1:")


def fetch(port: int, path: str) -> int | None:
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        con.request("GET", path)
        return con.getresponse().status
    except OSError:
        return None
    finally:
        con.close()


def test_scripts_dev_serves_the_app_it_is_given_with_the_serve_settings(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = no_target_env(DATABASE_URL=database_url, PORT=str(port), ACCESS_LOG="false")
    log = tmp_path / "dev.log"
    with (
        log.open("w") as out,
        subprocess.Popen(
            [str(ROOT / "scripts" / "dev"), "--app", "tests.support.writes:app"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the whole group, as in a terminal
        ) as dev,
    ):
        try:
            wait_until(lambda: fetch(port, "/api/v1/ready") == 200, "scripts/dev", timeout=120)
            assert fetch(port, "/boom") == 500  # a route of tests.support.writes:app only
        finally:
            os.killpg(dev.pid, signal.SIGINT)
            status = dev.wait(60)
    assert status == 0, log.read_text()


def test_scripts_dev_refuses_an_unknown_argument() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "dev"), "--ap", "x:y"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "error: unknown argument --ap (usage: scripts/dev [--app MODULE:FACTORY])\n"
    )
