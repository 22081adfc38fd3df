"""What metrics cost /api/v1/ready: the same app with and without them, in-process.

    .venv/bin/python docs/bench_metrics.py [PATH] [--asyncio]

Starts a throwaway embedded PostgreSQL, builds two apps with `create_app()` — one as
shipped, one with the metrics middleware removed and the readiness observation a no-op —
and times raw ASGI calls (no HTTP client in the way) on uvloop, in alternating rounds so
that drift and neighbours hit both alike. Prints the per-request medians and the median of
the paired per-round differences (wall clock and process CPU).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service import create_app
from service.testing.apps import running, test_settings
from service.testing.cluster import Cluster

PER_ROUND, ROUNDS, WARM_UP = 100, 200, 500


async def call(app: Any, state: dict[str, Any], path: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": state,
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    assert statuses == [200], statuses


async def bench(url: str, path: str) -> None:
    apps = {}
    for name in ("metrics", "bare"):
        app = create_app(test_settings(url, pool_min_size=2, pool_max_size=5))
        if name == "bare":
            app.user_middleware.clear()
            app.state.metrics.observe_ready = lambda outcome, seconds: None
        apps[name] = app
    wall: dict[str, list[float]] = {name: [] for name in apps}
    cpu: dict[str, list[float]] = {name: [] for name in apps}
    states = {}
    async with AsyncExitStack() as stack:
        for name, app in apps.items():
            await stack.enter_async_context(running(app))
            states[name] = dict(app.state.lifespan_state)
            assert await states[name]["db"].wait_connected(10)
            for _ in range(WARM_UP):
                await call(app, states[name], path)
        for round_ in range(ROUNDS):
            order = list(apps.items()) if round_ % 2 else list(reversed(apps.items()))
            for name, app in order:
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(PER_ROUND):
                    await call(app, states[name], path)
                wall[name].append((time.perf_counter() - started) / PER_ROUND * 1e6)
                cpu[name].append((time.process_time() - cpu_started) / PER_ROUND * 1e6)
    print(f"{path}: {ROUNDS} alternating rounds of {PER_ROUND} requests")
    for label, data in (("wall", wall), ("cpu", cpu)):
        bare = statistics.median(data["bare"])
        extra = statistics.median(m - b for m, b in zip(data["metrics"], data["bare"], strict=True))
        print(
            f"  {label:4s}: without metrics {bare:7.1f} us/request, "
            f"with metrics {extra:+.1f} us ({extra / bare * 100:+.2f} %)"
        )


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path = args[0] if args else "/api/v1/ready"
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="bench-metrics-")) / "pg").init().start()
    try:
        if "--asyncio" in sys.argv:
            asyncio.run(bench(cluster.url(), path))
        else:
            import uvloop

            uvloop.run(bench(cluster.url(), path))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
