"""What /api/v1/ready answers while the database is stopped, hung, restarted and switched
over to its standby (measured).

Starts a throwaway cluster (tests/support/cluster.py) and the real service
(tests/support/process.py), breaks the cluster in each way and times the probes from
outside, like a kubelet would; then a primary with a streaming standby, two services (a
multi-host URL, and a single-host URL on the primary) and a switchover. Run through
`scripts/faults`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.cluster import Cluster, Pair
from tests.support.polling import wait_until
from tests.support.process import READY, ServiceProcess

PROBES = 20


def probe(service: ServiceProcess) -> tuple[int, str, float]:
    """(status, the readiness word, ms)."""
    start = time.perf_counter()
    answer = service.fetch(READY)
    elapsed = (time.perf_counter() - start) * 1000
    if answer is None:
        return 0, "no answer", elapsed
    status, body = answer
    word = json.loads(body).get("dependencies", {}).get("db", "?")
    return status, word, elapsed


def measure(service: ServiceProcess, label: str, rows: list[str]) -> None:
    results = [probe(service) for _ in range(PROBES)]
    answers = sorted({f"{s} {w}" for s, w, _ in results})
    ms = [e for _, _, e in results]
    rows.append(f"| {label} | {', '.join(answers)} | {statistics.median(ms):.1f} | {max(ms):.1f} |")


def until_ready(service: ServiceProcess, start: float | None = None) -> float:
    start = time.perf_counter() if start is None else start
    wait_until(lambda: service.get(READY) == 200, "readiness to answer 200", interval=0.01)
    return time.perf_counter() - start


def switchover(work: Path, rows: list[str]) -> None:
    """Stop the primary, promote the standby, restart the old primary as its standby; then
    back. A multi-host URL follows by itself; a single-host URL on the old primary is
    read_only until it is the primary again."""
    pair = Pair(work / "ha")
    old, new = pair.primary, pair.standby
    multi = ServiceProcess(pair.url(new, old))  # the standby first: read-write skips it
    single = ServiceProcess(old.url())
    try:
        multi.start()
        single.start()
        measure(multi, "HA pair, multi-host URL (standby listed first)", rows)
        old.wait_streaming_to(new)
        old.stop()
        measure(multi, "switchover: primary stopped, standby not yet promoted", rows)
        new.promote()
        promoted = time.perf_counter()
        back = until_ready(multi, promoted)
        old.follow(new)
        old.start()
        label = f"standby promoted (multi-host: first 200 {back * 1000:.0f} ms after promotion)"
        measure(multi, label, rows)
        measure(single, "old primary back as a standby (single-host URL on it)", rows)
        new.wait_streaming_to(old)
        new.stop()
        old.promote()
        promoted = time.perf_counter()
        back = until_ready(single, promoted)
        new.follow(old)
        new.start()
        label = f"switched back (single-host: first 200 {back * 1000:.0f} ms after promotion)"
        measure(single, label, rows)
    finally:
        multi.stop()
        single.stop()
        pair.destroy()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="service-faults-"))
    cluster = Cluster(work / "pg").init().start()
    service = ServiceProcess(cluster.url())
    rows = ["| database | answers | median ms | max ms |", "|---|---|---|---|"]
    try:
        service.start()
        measure(service, "working", rows)
        cluster.stop()
        measure(service, "stopped (pg_ctl stop -m fast)", rows)
        cluster.start()
        back = until_ready(service)
        measure(service, f"started again (first 200 after {back * 1000:.0f} ms)", rows)
        cluster.pause()
        measure(service, "hung (SIGSTOP on every process)", rows)
        cluster.resume()
        back = until_ready(service)
        measure(service, f"resumed (SIGCONT; first 200 after {back * 1000:.0f} ms)", rows)
        cluster.stop("immediate")
        cluster.start()
        first = probe(service)
        measure(service, f"restarted -m immediate (first probe: {first[0]} {first[1]})", rows)
        start = time.perf_counter()
        code = service.terminate()
        sigterm = f"\nSIGTERM to exit: {(time.perf_counter() - start) * 1000:.0f} ms, status {code}"
        cluster.destroy()
        switchover(work, rows)
        rows.append(sigterm)
    finally:
        service.stop()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print(f"DB_READY_TIMEOUT={os.environ.get('DB_READY_TIMEOUT', '0.8')} s, {PROBES} probes each")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
