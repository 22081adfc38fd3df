"""scripts/test's coverage gate is for the whole suite: a selection is judged by its tests.

A pytest plugin, the one module here that is (scripts/test loads it with `-p`, so that it
applies to a feature's test file outside tests/ too): when the run selects a subset — `-k`,
`-m`, `--deselect`, `--lf`, or paths other than the testpaths — `--cov-fail-under` is set to
0, and the run exits by its tests' outcome.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "cov_fail_under", None) and selects_a_subset(config):
        # pytest-cov reads the early namespace (known_args_namespace), not config.option.
        for options in (config.option, config.known_args_namespace):
            options.cov_fail_under = 0


def selects_a_subset(config: pytest.Config) -> bool:
    option = config.option
    if option.keyword or option.markexpr or option.deselect or getattr(option, "lf", False):
        return True
    root = config.rootpath
    whole = {(root / path).resolve() for path in config.getini("testpaths")} | {root}
    given = {(config.invocation_params.dir / arg.split("::")[0]).resolve() for arg in config.args}
    return not given <= whole
