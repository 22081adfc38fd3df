"""What /api/v1/ready answers while the database is stopped, hung and restarted (measured).

Starts a throwaway cluster (tests/cluster.py) and the real service (`python -m service serve`),
breaks the cluster in each way and times the probes from outside, like a kubelet would.
Run through `scripts/faults`.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import Cluster, free_port  # noqa: E402

PROBES = 20


def probe(port: int) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/ready", timeout=10) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    elapsed = (time.perf_counter() - start) * 1000
    word = body.split('"db":"')[1].split('"')[0] if '"db":"' in body else "?"
    return status, word, elapsed


def measure(port: int, label: str, rows: list[str]) -> None:
    results = [probe(port) for _ in range(PROBES)]
    answers = sorted({f"{s} {w}" for s, w, _ in results})
    ms = [e for _, _, e in results]
    rows.append(f"| {label} | {', '.join(answers)} | {statistics.median(ms):.1f} | {max(ms):.1f} |")


def until_ready(port: int) -> float:
    start = time.perf_counter()
    while True:
        try:
            if probe(port)[0] == 200:
                return time.perf_counter() - start
        except urllib.error.URLError:  # not listening yet
            pass
        time.sleep(0.01)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="service-faults-"))
    cluster = Cluster(work / "pg").init().start()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": cluster.url(),
        "PORT": str(port),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "warning",
    }
    server = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env)
    rows = ["| database | answers | median ms | max ms |", "|---|---|---|---|"]
    try:
        until_ready(port)
        measure(port, "working", rows)
        cluster.stop()
        measure(port, "stopped (pg_ctl stop -m fast)", rows)
        cluster.start()
        back = until_ready(port)
        measure(port, f"started again (first 200 after {back * 1000:.0f} ms)", rows)
        cluster.pause()
        measure(port, "hung (SIGSTOP on every process)", rows)
        cluster.resume()
        back = until_ready(port)
        measure(port, f"resumed (SIGCONT; first 200 after {back * 1000:.0f} ms)", rows)
        cluster.stop("immediate")
        cluster.start()
        first = probe(port)
        measure(port, f"restarted -m immediate (first probe: {first[0]} {first[1]})", rows)
        start = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        rows.append(
            f"\nSIGTERM to exit: {(time.perf_counter() - start) * 1000:.0f} ms, status {code}"
        )
    finally:
        if server.poll() is None:
            server.kill()
        cluster.destroy()
    print(f"DB_READY_TIMEOUT={os.environ.get('DB_READY_TIMEOUT', '0.8')} s, {PROBES} probes each")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
