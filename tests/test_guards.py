"""The guards on async tests (service/testing/guards.py, the plugin's) fail a test when
they should.

Shown on an inner pytest run in a subprocess, the plugin loaded by its entry point.
"""

from __future__ import annotations

import pytest

from tests.support.process import ROOT

INNER = """
import asyncio

import pytest


@pytest.mark.async_timeout(0.2)
async def test_hangs():
    await asyncio.Event().wait()


async def test_lets_an_exception_reach_the_loop():
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)


async def test_clean():
    await asyncio.sleep(0)
"""


def test_a_hung_test_times_out_and_a_loop_exception_fails_at_teardown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
        timeout=120,
    )
    # The loop-exception test passes its call and errors at teardown; the clean one passes.
    result.assert_outcomes(passed=2, failed=1, errors=1)
    # pytest prints errors, then failures (with where the test hung), then the summary.
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_lets_an_exception_reach_the_loop*",
            "*exceptions reached the event loop's handler:*",
            "*ZeroDivisionError: division by zero*",
            "*await asyncio.Event().wait()*",
            "*the test ran past its 0.2 s limit (async_timeout marker to change)*",
            "FAILED test_inner.py::test_hangs*",
            "ERROR test_inner.py::test_lets_an_exception_reach_the_loop*",
        ]
    )
