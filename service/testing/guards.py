"""Guards on every async test, as in asyncpg's test base.

Each coroutine test runs under a timeout (60 s, or `@pytest.mark.async_timeout(seconds)`):
a test that waits on its own lock (a row the `db` fixture holds, say) fails naming the
limit instead of hanging the run. An exception that reaches the event loop's exception
handler (a callback that raised, a task whose exception nobody retrieved: a feature's
background work failing unseen) fails the test at teardown; `expect_loop_exception` is
for the test that means it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import traceback
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

DEFAULT_ASYNC_TIMEOUT = 60.0
_LOOP_EXCEPTIONS = pytest.StashKey[list[dict[str, Any]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"async_timeout(seconds): bound an async test (default {DEFAULT_ASYNC_TIMEOUT:g} s)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
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
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
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
