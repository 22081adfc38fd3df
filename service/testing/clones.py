"""Clones of a migrated template database, made ahead in the background (integresql's way).

A test takes a clone nobody has seen (`acquire`) and gives it back (`release`); a creator
thread keeps `ahead` clones ready, a dropper thread drops the given-back ones. Creating
and dropping a database still costs what it costs (about 25 ms together on tmpfs), but
off the test's critical path: set-up is taking a name from a queue.

Threads, not asyncio: pytest-asyncio gives each test its own event loop and the pool must
outlive them; psycopg releases the GIL while it waits on the server. Each thread has one
persistent autocommit connection (a connection per statement costs 15-20 ms).

`ahead=0` makes and drops each clone on the test's own thread instead (no background work:
for a shared server where churn behind the tests' backs is unwelcome).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from .servers import DROP, PREFIX, Server

CREATE = "CREATE DATABASE {} TEMPLATE {}"
OURS = "SELECT datname FROM pg_database WHERE starts_with(datname, %s)"
POLL = 0.05  # seconds between looks at the creator's error while waiting for a clone


class ClonePoolError(RuntimeError):
    """The pool cannot hand out a clone: the creator failed, or none came in time."""


class ClonePool:
    """Clones of `template` on `server`, `ahead` of the tests that take them."""

    def __init__(
        self, server: Server, template: str, *, ahead: int = 2, timeout: float = 60.0
    ) -> None:
        self.server = server
        self.template = template
        self.ahead = ahead
        self.timeout = timeout
        # Unique per session and per xdist worker: sessions sharing a server never mix.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.prefix = f"{PREFIX}{worker}_{uuid.uuid4().hex[:6]}_"
        self._ready: queue.Queue[str] = queue.Queue()
        self._room = threading.Semaphore(ahead)  # ready + being made <= ahead
        self._doomed: queue.Queue[str | None] = queue.Queue()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._made = 0
        self._lock = threading.Lock()
        self._inline: psycopg.Connection[Any] | None = None
        self._threads: list[threading.Thread] = []
        if ahead > 0:
            for target, name in ((self._create_loop, "creator"), (self._drop_loop, "dropper")):
                thread = threading.Thread(target=target, name=f"clone-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)

    # -- the tests' side ---------------------------------------------------------------

    def acquire(self) -> str:
        """A clone nobody else has seen; waits for the one being made if none is ready."""
        if self.ahead == 0:
            return self._create(self._inline_connection())
        return self._take(time.perf_counter() + self.timeout)

    def release(self, name: str) -> None:
        """Done with `name`: it is dropped (in the background when `ahead` > 0)."""
        if self.ahead == 0:
            self._drop(self._inline_connection(), name)
        else:
            self._doomed.put(name)

    def close(self, *, drop: bool = True) -> None:
        """Stop making clones; with `drop`, drop every one made (ready, released or leaked).

        Without `drop` the server's own end removes them (a throwaway cluster).
        """
        self._stopping.set()
        self._doomed.put(None)
        for thread in self._threads:
            thread.join(timeout=self.timeout)
        if self._inline is not None:
            self._inline.close()
        if drop:
            with self.server.admin() as con:
                for (name,) in con.execute(OURS, (self.prefix,)).fetchall():
                    self._drop(con, name)

    # -- the threads -------------------------------------------------------------------

    def _take(self, deadline: float) -> str:
        while True:
            if self._error is not None:
                raise ClonePoolError(
                    f"the pool of clones of {self.template} failed: {self._error}"
                ) from self._error
            try:
                name = self._ready.get(timeout=POLL)
            except queue.Empty:
                if time.perf_counter() > deadline:
                    raise ClonePoolError(
                        f"no clone of {self.template} came in {self.timeout:g} s"
                    ) from None
                continue
            self._room.release()
            return name

    def _create_loop(self) -> None:
        try:
            with self.server.admin() as con:
                while not self._stopping.is_set():
                    if self._room.acquire(timeout=0.1):
                        self._ready.put(self._create(con))
        except BaseException as error:  # acquire() raises it: the test fails with the cause
            self._error = error

    def _drop_loop(self) -> None:
        try:
            with self.server.admin() as con:
                while (name := self._doomed.get()) is not None:
                    self._drop(con, name)
        except BaseException as error:
            self._error = self._error or error

    def _create(self, con: psycopg.Connection[Any]) -> str:
        with self._lock:
            self._made += 1
            name = f"{self.prefix}{self._made}"
        query = sql.SQL(CREATE).format(sql.Identifier(name), sql.Identifier(self.template))
        con.execute(query)
        return name

    def _drop(self, con: psycopg.Connection[Any], name: str) -> None:
        assert name.startswith(self.prefix)  # never anything this pool did not make
        con.execute(sql.SQL(DROP).format(sql.Identifier(name)))

    def _inline_connection(self) -> psycopg.Connection[Any]:
        if self._inline is None or self._inline.closed:
            self._inline = self.server.admin()
        return self._inline
