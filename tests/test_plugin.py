"""The pytest plugin for features (service/testing/plugin.py, fixtures.py), in inner pytest
runs: a folder with no conftest of its own, the README's test file as pasted, the app
factory's two forms, isolation through `db` and through the app's pool, one-line errors.

Inner runs use this session's server (TEST_DATABASE_URL): each makes and drops its own
template and clones there.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.settings import Settings
from service.testing.apps import build_app
from service.testing.servers import Server
from tests.support.migrations import SHIPPED
from tests.support.readme import readme_block

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def inner(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server: Server
) -> pytest.Pytester:
    """A folder of its own; its runs reach this session's server, never a cluster of theirs."""
    monkeypatch.setenv("TEST_DATABASE_URL", server.admin_url)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return pytester


def run(inner: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess with the checkout's own configuration (asyncio mode, warnings
    as errors, --strict-config) and no conftest: the plugin comes by its entry point."""
    return inner.runpytest_subprocess(
        "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(inner.path), "-p", "no:cacheprovider",
        *args, timeout=180,
    )  # fmt: skip


def baseline_and(inner: pytest.Pytester, **migrations: str) -> Path:
    """`sql/` in the inner folder: the shipped baseline and the given NNNN_name=SQL files."""
    folder = inner.mkdir("sql")
    for path in SHIPPED.glob("0001_*"):
        shutil.copy(path, folder)
    for name, text in migrations.items():
        (folder / f"{name}.sql").write_text(text)
        (folder / f"{name}.rollback.sql").write_text("")
    return folder


# -- in this session: the suite loads the plugin too --------------------------------------


async def test_db_is_the_test_s_database_set_up_as_the_app_s(db: Any, database_url: str) -> None:
    assert await db.fetchval("SELECT current_database()") == database_url.rsplit("/", 1)[1]
    assert await db.fetchval("SELECT current_setting('TimeZone')") == "UTC"
    assert await db.fetchval("SELECT '{\"a\": [1]}'::jsonb") == {"a": [1]}  # the app's codecs


async def test_client_runs_the_built_in_app_on_the_test_s_database(
    client: Any, app: Any, settings: Settings, database_url: str
) -> None:
    assert settings.database_url.value == database_url
    answer = await client.get("/api/v1/ready")
    assert (answer.status_code, answer.json()["dependencies"]["db"]) == (200, "connected")
    assert app.state.lifespan_state["db"].connected


async def test_a_database_of_its_own_with_nothing_applied(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as con:
        assert con.execute("SELECT to_regclass('_yoyo_migration')").fetchone() == (None,)


def test_a_factory_without_arguments_gets_the_test_s_settings_from_every_read(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://app@127.0.0.1:9/elsewhere\n")
    built = build_app(lambda: Settings.from_env(), settings)
    assert built is settings
    assert Settings.from_env().database_url.value == "postgresql://app@127.0.0.1:9/elsewhere"


# -- in inner runs ---------------------------------------------------------------------------


def test_the_readmes_feature_test_file_runs_as_pasted(inner: pytest.Pytester) -> None:
    after = "## Using the database in a handler"
    (inner.path / "myapp.py").write_text(readme_block("python", after))
    tests = readme_block("python", "and the feature's test file")
    (inner.path / "test_myapp.py").write_text(tests)
    baseline_and(inner, **{"0002_add_orders": readme_block("sql", after)})
    # A .env here naming another database must not move the app (its factory takes no
    # argument and reads Settings.from_env()): the test's database wins.
    (inner.path / ".env").write_text("DATABASE_URL=postgresql://app@127.0.0.1:9/elsewhere\n")
    ini = tomllib.loads(readme_block("toml", "Name the app once"))["tool"]["pytest"]
    options = [f"-o{key}={value}" for key, value in ini["ini_options"].items()]
    result = run(inner, *options, "--service-migrations", "sql", "test_myapp.py")
    result.assert_outcomes(passed=tests.count("\nasync def test_"))


FEATURE = """
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import Settings, create_app, db_connection

SEEN = []


async def note(request):
    async with db_connection(request) as con:
        count = await con.fetchval(
            "WITH added AS (INSERT INTO notes (body) VALUES ($1) RETURNING id)"
            " SELECT count(*) FROM notes", request.path_params["body"]
        )
        database = await con.fetchval("SELECT current_database()")
    return JSONResponse({"before": count, "database": database})


def app(settings: Settings):
    SEEN.append(settings)
    return create_app(settings, routes=[Route("/notes/{body}", note, methods=["POST"])])
"""

ISOLATION = """
import pytest

import feature


@pytest.mark.parametrize("i", range(6))
async def test_each_test_sees_its_own_writes_only(client, db, database_url, settings, i):
    assert feature.SEEN[-1] is settings  # the factory was given the test's settings
    assert settings.database_url.value == database_url
    assert await db.fetchval("SELECT count(*) FROM notes") == 1  # the migration's row only
    answer = (await client.post(f"/notes/from-app-{i}")).json()
    assert answer["database"] == await db.fetchval("SELECT current_database()")
    await db.execute("INSERT INTO notes (body) VALUES ($1)", f"from-db-{i}")
    bodies = await db.fetch("SELECT id, body FROM notes ORDER BY id")
    assert [tuple(r) for r in bodies] == [(1, "seed"), (2, f"from-app-{i}"), (3, f"from-db-{i}")]
    assert await db.fetchval("SELECT to_regclass('scratch_table')") is None
    await db.execute("CREATE TABLE scratch_table (id int)")  # a schema change stays here too
"""


def test_a_folder_with_no_conftest_gets_isolated_databases_and_the_app(
    inner: pytest.Pytester,
) -> None:
    (inner.path / "feature.py").write_text(FEATURE)
    (inner.path / "test_isolation.py").write_text(ISOLATION)
    notes = (
        "CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text);\n"
        "INSERT INTO notes (body) VALUES ('seed');\n"
    )
    baseline_and(inner, **{"0002_notes": notes})
    # The ini's own folder is where a relative service_migrations points.
    (inner.path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\nservice_app = feature:app\nservice_migrations = sql\n"
        "service_clones_ahead = 2\n"  # two workers' pools on one server
    )
    result = inner.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "xdist", "-n", "2", str(inner.path), timeout=180
    )
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["service.testing: 6 isolated databases (TEST_DATABASE_URL)*"])


def test_the_built_in_app_by_default(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_default="""
        async def test_ready(client):
            answer = await client.get("/api/v1/ready")
            assert (answer.status_code, answer.json()["dependencies"]["db"]) == (200, "connected")
        """
    )
    run(inner, "test_default.py").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--service-app", "nosuch:app"],
            '*--service-app nosuch:app: Could not import module "nosuch".',
        ),
        (["-o", "service_app=os:sep"], "*service_app os:sep: str is not an app factory"),
        (
            ["--service-migrations", "nowhere"],
            "*the template database (*nowhere): migrations directory *nowhere does not exist",
        ),
    ],
)
def test_a_mistake_is_one_line_naming_the_option(
    inner: pytest.Pytester, args: list[str], line: str
) -> None:
    inner.makepyfile(test_one="async def test_one(client):\n    pass\n")
    result = run(inner, *args, "test_one.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([line])
    assert "Traceback" not in result.stdout.str()


def test_a_broken_migration_names_the_file(inner: pytest.Pytester) -> None:
    baseline_and(
        inner, **{"0002_broken": "CREATE TABLE t (id int);\nALTER TABLE nope ADD x int;\n"}
    )
    inner.makepyfile(test_one="async def test_one(db):\n    pass\n")
    result = run(inner, "--service-migrations", "sql", "test_one.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*migration 0002_broken.sql failed at statement 2*"])


def test_clones_ahead_must_be_a_whole_number(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_one="def test_one():\n    pass\n")
    result = run(inner, "-o", "service_clones_ahead=two", "test_one.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*service_clones_ahead: 'two' is not a whole number >= 0"])


def test_the_orders_example_is_the_readmes_feature() -> None:
    """examples/orders (run by .ci/run) tests the README's code, not a copy that drifted."""
    after = "## Using the database in a handler"
    example = ROOT / "examples" / "orders"
    assert (example / "myapp.py").read_text() == readme_block("python", after)
    assert (example / "sql" / "0002_add_orders.sql").read_text() == readme_block("sql", after)
    assert "conftest" not in {path.stem for path in example.iterdir()}
