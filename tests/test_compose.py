"""docker-compose.yml: valid per the Compose specification's schema, and wired as designed.

No Docker engine runs here, so the file is checked, not run: tests/data/compose-spec.json
is a pinned copy of the specification's JSON schema (tests/data/README.md says whence). The
apps' start command (`migrate check`, then serve) is run, against real PostgreSQL.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service.settings import Settings
from tests.support.cluster import free_port
from tests.support.migrations import shipped_ids
from tests.support.servers import Server

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
KNOWN_VARIABLES = set(Settings.variables())
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def interpolate(value: str) -> str:
    """What compose substitutes with an empty shell: the ${VAR:-default} defaults."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def dockerfile() -> str:
    return SERVICES["app"]["build"]["dockerfile_inline"]


def test_the_file_validates_against_the_compose_schema() -> None:
    assert schema_errors(COMPOSE) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["services"]["app"]["depends_on"]["migrate"].update(condition="finished"),
        lambda c: c["services"]["db"].update(healthcheck={"test": "x", "interval": 5}),
        lambda c: c["services"]["app"]["build"].update(dockerfile_inlined="FROM x"),
        lambda c: c.update(servics={}),
    ],
)
def test_the_schema_catches_mistakes(break_it) -> None:
    broken = copy.deepcopy(COMPOSE)
    break_it(broken)
    assert schema_errors(broken) != []


def test_db_is_a_pinned_postgres_with_a_named_volume_and_pg_isready() -> None:
    db = SERVICES["db"]
    image, _, tag = db["image"].partition(":")
    assert image == "postgres"
    assert re.fullmatch(r"\d+\.\d+(-[a-z0-9]+)?", tag), "pin a minor version, never latest"
    volume = db["volumes"][0].split(":")[0]
    assert volume in COMPOSE["volumes"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])


def test_migrate_runs_once_after_a_healthy_db_and_connects_directly() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["python", "-m", "service", "migrate", "apply"]
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"
    assert "@db:5432/" in migrate["environment"]["DATABASE_URL"]
    assert "profiles" not in migrate


GATE = ["sh", "-c", "python -m service migrate check && exec python -m service serve"]


@pytest.mark.parametrize("name", ["app", "app-pgbouncer"])
def test_the_apps_serve_only_after_migrate_check(name: str) -> None:
    assert SERVICES[name]["command"] == GATE
    assert SERVICES[name]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }


def test_the_check_gate_serves_a_migrated_database_only(
    tmp_path: Path, server: Server, database_url: str
) -> None:
    # The gate as the container runs it, `python -m service serve` answering "serving".
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(
        '#!/bin/sh\nif [ "$*" = "-m service serve" ]; then echo serving; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)

    def gate(url: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PATH=f"{bin_dir}:{env['PATH']}", DATABASE_URL=url, PYTHONPATH=str(ROOT))
        return subprocess.run(
            GATE, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    pending = server.create_database()
    try:
        started = gate(server.url(pending))
    finally:
        server.drop_database(pending)
    pending_lines = "".join(f"pending  {name}\n" for name in shipped_ids())  # sql/, as it is
    assert (started.returncode, started.stdout) == (1, pending_lines)
    down = gate(f"postgresql://app@127.0.0.1:{free_port()}/app")
    assert (down.returncode, down.stdout) == (2, "")
    assert gate(database_url).stdout == f"up to date: {len(shipped_ids())} applied\nserving\n"


def test_app_starts_after_migrations_and_checks_readiness_without_curl() -> None:
    app = SERVICES["app"]
    assert app["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "db": {"condition": "service_healthy"},
    }
    test = app["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python" and "curl" not in test
    assert "urllib.request" in test[-1] and "/api/v1/ready" in test[-1]
    assert "profiles" not in app
    assert app["ports"] == ["8000:8000"]
    assert "@db:5432/" in app["environment"]["DATABASE_URL"]


@pytest.mark.parametrize("name", ["app", "migrate", "app-pgbouncer"])
def test_every_variable_is_one_settings_reads_and_parses(name: str) -> None:
    environment = SERVICES[name]["environment"]
    assert set(environment) <= KNOWN_VARIABLES, set(environment) - KNOWN_VARIABLES
    values = {key: interpolate(str(value)) for key, value in environment.items()}
    settings = Settings.from_env(values, env_file=None)
    assert settings.database_url.value is not None


def test_shutdown_fits_in_the_stop_grace_period() -> None:
    app = SERVICES["app"]
    grace = int(app["stop_grace_period"].removesuffix("s"))
    env = app["environment"]
    assert grace > float(env["SHUTDOWN_TIMEOUT"]) + float(env["DB_CLOSE_TIMEOUT"])
    assert env["HOST"] == "0.0.0.0"  # reachable from outside the container


def test_the_inline_image_is_multi_stage_slim_and_not_root() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.MULTILINE)
    assert len(stages) == 2
    final_image = stages[-1][0]
    assert re.fullmatch(r"python:3\.11[\w.]*-slim[\w-]*", final_image), final_image
    final = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert "--from=builder" in final
    for tool in ("gcc", "build-essential", "apt-get", "pip install"):
        assert tool not in final
    assert 'CMD ["python", "-m", "service", "serve"]' in final


def test_pgbouncer_is_opt_in_transaction_mode_with_statement_cache_off() -> None:
    pgbouncer = SERVICES["pgbouncer"]
    assert pgbouncer["profiles"] == ["pgbouncer"]
    assert pgbouncer["environment"]["POOL_MODE"] == "transaction"
    name, _, tag = pgbouncer["image"].partition(":")
    assert name and tag and tag != "latest"
    through = SERVICES["app-pgbouncer"]
    assert through["profiles"] == ["pgbouncer"]
    env = through["environment"]
    assert env["DB_STATEMENT_CACHE_SIZE"] == "0"
    assert "@pgbouncer:6432/" in env["DATABASE_URL"]
    assert through["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    # Everything else the same as the plain app.
    assert {
        k: v for k, v in env.items() if k not in {"DATABASE_URL", "DB_STATEMENT_CACHE_SIZE"}
    } == {k: v for k, v in SERVICES["app"]["environment"].items() if k != "DATABASE_URL"}
