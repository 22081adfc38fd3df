"""tests/support: importable by scripts without pytest or a Docker probe; bounded waits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.polling import WaitTimeout, wait_until, wait_until_async
from tests.support.process import ROOT

SUPPORT_MODULES = ("apps", "blackhole", "cluster", "migrations", "polling", "process", "servers")


def test_support_imports_neither_pytest_nor_docker() -> None:
    imports = "; ".join(f"import tests.support.{name}" for name in SUPPORT_MODULES)
    report = "import json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", f"{imports}; {report}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(done.stdout))
    assert {f"tests.support.{name}" for name in SUPPORT_MODULES} <= loaded
    assert "pytest" not in loaded and "_pytest" not in loaded
    # The ladder probes Docker when first asked, not at import.
    assert "docker" not in loaded and "testcontainers" not in loaded


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), "an answer", interval=0) == "ready"


def test_wait_until_names_what_it_waited_for_when_it_gives_up() -> None:
    with pytest.raises(WaitTimeout, match=r"^waited 0\.01 s for the moon; last seen: ''$"):
        wait_until(lambda: "", "the moon", timeout=0.01)


def test_a_failing_condition_ends_the_wait_at_once() -> None:
    def exited() -> bool:
        raise RuntimeError("the service exited with 2")

    with pytest.raises(RuntimeError, match="exited with 2"):
        wait_until(exited, "the service", timeout=60)


async def test_wait_until_async_awaits_an_async_condition() -> None:
    answers = iter([False, True])

    async def condition() -> bool:
        return next(answers)

    assert await wait_until_async(condition, "a coroutine's answer", interval=0) is True


async def test_wait_until_async_gives_up_with_the_last_value() -> None:
    with pytest.raises(WaitTimeout, match=r"^waited 0 s for a full pool; last seen: 0$"):
        await wait_until_async(lambda: 0, "a full pool", timeout=0)


GATED = """
import half_covered


def test_gate():
    assert half_covered.used() == 1
"""
HALF_COVERED = """
def used():
    return 1


def unused():
    return 2
"""


@pytest.mark.parametrize(
    ("selection", "gated"),
    [([], True), (["-k", "gate"], False), (["-m", "not fault"], False), (["test_inner.py"], False)],
)
def test_the_coverage_gate_is_for_the_whole_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, selection: list[str], gated: bool
) -> None:
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{pytester.path}")  # tests.support; the module
    pytester.makepyfile(test_inner=GATED, half_covered=HALF_COVERED)
    loop_scope = "asyncio_default_fixture_loop_scope = function"
    pytester.makeini(f"[pytest]\ntestpaths = .\nmarkers = fault: x\n{loop_scope}\n")
    result = pytester.runpytest_subprocess(
        "-p", "tests.support.coverage_gate", "--cov=half_covered", "--cov-fail-under=90",
        "-p", "no:cacheprovider", *selection,
    )  # fmt: skip
    result.assert_outcomes(passed=1)  # 75 % covered (3 of 4 lines)
    if gated:
        assert result.ret == 1
        result.stdout.fnmatch_lines(["*Required test coverage of 90% not reached*"])
    else:
        assert result.ret == 0, result.stdout.str()
