"""A feature that writes, served by `python -m service serve --app tests.support.writes:app`,
and a load of writes against it: what a switchover does to writes in flight. (It also
echoes a JSON body, for tests of body limits on a real server.)

The table is made by `create_table(url)` on the primary before the service starts. A
write inserts a row in a transaction; `?hold=SECONDS` keeps the transaction open that
long after the insert (a write in flight when the server goes away). `/lock/{id}` locks a
row (`SELECT … FOR UPDATE`) and keeps the transaction open `?hold=SECONDS` while the
handler awaits something else, as a handler that calls another service mid-transaction.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import create_app, db_connection, json_response, read_json

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS fault_writes"
    " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
)
NO_ANSWER = 0  # the status recorded for a request the server never answered


def create_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(CREATE_TABLE)


async def write(request: Request) -> JSONResponse:
    hold = float(request.query_params.get("hold", "0"))
    async with db_connection(request) as con:
        async with con.transaction():
            row_id = await con.fetchval("INSERT INTO fault_writes DEFAULT VALUES RETURNING id")
            if hold > 0:
                await con.execute("SELECT pg_sleep($1)", hold)
    return JSONResponse({"id": row_id})


async def lock(request: Request) -> JSONResponse:
    row_id = request.path_params["id"]
    hold = float(request.query_params.get("hold", "0"))
    async with db_connection(request) as con:
        async with con.transaction():
            await con.execute("SELECT id FROM fault_writes WHERE id = $1 FOR UPDATE", row_id)
            await asyncio.sleep(hold)  # idle in transaction, the row locked
    return JSONResponse({"id": row_id})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("a handler bug")


async def echo(request: Request) -> Response:
    return json_response(await read_json(request))


def app() -> Starlette:
    return create_app(
        routes=[
            Route("/write", write, methods=["POST"]),
            Route("/lock/{id:int}", lock, methods=["POST"]),
            Route("/boom", boom, methods=["GET"]),
            Route("/echo", echo, methods=["POST"]),
        ]
    )


@dataclass
class Outcome:
    """One request: when it was answered (time.monotonic()), its status and, for a 503,
    the database's word (`disconnected`, `read_only`, ...)."""

    at: float
    status: int
    word: str = ""

    def __str__(self) -> str:
        if self.status == NO_ANSWER:
            return "no answer"
        return f"{self.status} {self.word}".rstrip()


@dataclass
class WriteLoad:
    """Writers on keep-alive HTTP connections, as a feature's clients are, until stopped.

    `plain` writers insert and commit; `held` ones keep their transaction open `hold`
    seconds after the insert. A request the server never answers (the connection closed
    under it) is recorded as NO_ANSWER and the writer reconnects.
    """

    port: int
    plain: int = 4
    held: int = 2
    hold: float = 0.2
    pause: float = 0.02
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> WriteLoad:
        for number in range(self.plain + self.held):
            path = "/write" if number < self.plain else f"/write?hold={self.hold}"
            thread = threading.Thread(target=self._run, args=(path,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, path: str) -> None:
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            word = ""
            try:
                con.request("POST", path)
                response = con.getresponse()
                body = response.read()
                status = response.status
                if status == 503:
                    word = str(json.loads(body).get("db", ""))
            except (OSError, http.client.HTTPException):
                status = NO_ANSWER
                con.close()  # a new connection for the next request
            with self._lock:
                self.outcomes.append(Outcome(time.monotonic(), status, word))
            self._stop.wait(self.pause)
        con.close()

    def statuses(self, since: float = 0.0) -> Counter[int]:
        with self._lock:
            return Counter(o.status for o in self.outcomes if o.at >= since)

    def answers(self) -> Counter[str]:
        """How many of each answer: `200`, `503 disconnected`, `no answer`, ..."""
        with self._lock:
            return Counter(str(o) for o in self.outcomes)

    def first_success(self, since: float) -> float | None:
        """Seconds from `since` to the first 200 answered after it."""
        with self._lock:
            times = [o.at for o in self.outcomes if o.at >= since and o.status == 200]
        return min(times) - since if times else None
