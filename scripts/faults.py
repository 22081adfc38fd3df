"""What /api/v1/ready answers while the database is stopped, hung, restarted and switched
over to its standby (measured), and how soon a query whose caller gave up (a timeout, a
client that disconnects) is gone from the server.

Starts a throwaway cluster (service/testing/cluster.py) and the real service
(tests/support/process.py), breaks the cluster in each way and times the probes from
outside, like a kubelet would; then a primary with a streaming standby, two services (a
multi-host URL, and a single-host URL on the primary) and a switchover; then switchovers
with writes in flight (answers by status, time to the first good write). Run through
`scripts/faults` (`--only-writes --switchovers 20` for just the last part, 20 times).

`--silent`: failures nothing announces, each without and with the protection the service
now sets (about six minutes): idle pooled connections whose packets are dropped (nftables on
the cluster's port, as a NAT that forgot its flows: tests/support/blackhole.py; needs root),
a write sent on such a connection, and a service frozen with SIGSTOP while its handler holds
a row lock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from service.testing.cluster import Cluster, Pair
from service.testing.cluster import switchover as switchover_clusters
from service.testing.polling import wait_until
from tests.support.blackhole import black_hole, why_not
from tests.support.process import READY, ServiceProcess
from tests.support.proxy import TcpProxy
from tests.support.writes import WriteLoad, create_table

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


def until_ready(service: ServiceProcess) -> float:
    start = time.perf_counter()
    wait_until(lambda: service.get(READY) == 200, "readiness to answer 200", interval=0.01)
    return time.perf_counter() - start


def _sleeping(cluster: Cluster) -> int:
    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
            " AND state = 'active' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _gone_after(cluster: Cluster, since: float) -> float:
    wait_until(lambda: _sleeping(cluster) == 0, "the query to leave the server", interval=0.005)
    return (time.perf_counter() - since) * 1000


def cancellations(cluster: Cluster, rows: list[str], rounds: int = 5) -> None:
    """A 20 s pg_sleep through a feature route: cut by DB_COMMAND_TIMEOUT, then by a client."""
    scripts = str(Path(__file__).resolve().parent)
    service = ServiceProcess(
        cluster.url(),
        app="bench_apps:sleeper",
        DB_COMMAND_TIMEOUT="1",
        PYTHONPATH=os.pathsep.join(p for p in (scripts, os.environ.get("PYTHONPATH", "")) if p),
    )
    timeouts: list[float] = []
    disconnects: list[float] = []
    answers: set[str] = set()
    try:
        service.start()
        for _ in range(rounds):
            answer = service.fetch("/sleep/20", timeout=30)
            answered = time.perf_counter()
            answers.add(f"{answer[0]} {answer[1].decode()}" if answer else "no answer")
            timeouts.append(_gone_after(cluster, answered))
        for _ in range(rounds):
            with socket.create_connection(("127.0.0.1", service.port)) as client:
                client.sendall(b"GET /sleep/20 HTTP/1.1\r\nHost: faults\r\n\r\n")
                wait_until(lambda: _sleeping(cluster) == 1, "the query to run", interval=0.005)
            left = time.perf_counter()  # the socket is closed: the client gave up
            disconnects.append(_gone_after(cluster, left))
    finally:
        service.stop()
    rows.append(
        "\n| caller gives up on a 20 s query | answer | query gone from the server after "
        "(median / max ms) |"
    )
    rows.append("|---|---|---|")
    rows.append(
        f"| DB_COMMAND_TIMEOUT=1 | {', '.join(sorted(answers))} | "
        f"{statistics.median(timeouts):.0f} / {max(timeouts):.0f} (from the answer) |"
    )
    rows.append(
        f"| client disconnects | nothing sent | "
        f"{statistics.median(disconnects):.0f} / {max(disconnects):.0f} (from the close) |"
    )


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
        back: list[float] = []  # seconds from promotion to the first 200

        def stopped() -> None:
            measure(multi, "switchover: primary stopped, standby not yet promoted", rows)

        switchover_clusters(
            old, new, stopped=stopped, promoted=lambda: back.append(until_ready(multi))
        )
        label = f"standby promoted (multi-host: first 200 {back[0] * 1000:.0f} ms after promotion)"
        measure(multi, label, rows)
        measure(single, "old primary back as a standby (single-host URL on it)", rows)
        switchover_clusters(new, old, promoted=lambda: back.append(until_ready(single)))
        label = f"switched back (single-host: first 200 {back[1] * 1000:.0f} ms after promotion)"
        measure(single, label, rows)
    finally:
        multi.stop()
        single.stop()
        pair.destroy()


WRITES_APP = "tests.support.writes:app"


def _word(service: ServiceProcess) -> str:
    return probe(service)[1]


def _ms(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{statistics.median(ms):.0f} / {max(ms):.0f}"


def _answers(counts: Counter[str]) -> str:
    return ", ".join(f"{answer} × {n}" for answer, n in sorted(counts.items()))


def _one_write_switchover(
    pair: Pair, proxy: TcpProxy, multi: ServiceProcess, single: ServiceProcess
) -> tuple[Counter[str], Counter[str], float, float]:
    """One switchover under load: both services' answers, and seconds to the first good
    write (multi-host: from promotion; proxied: from the proxy routing to the new primary)."""
    with WriteLoad(multi.port) as multi_load, WriteLoad(single.port) as proxy_load:
        wait_until(
            lambda: min(multi_load.statuses()[200], proxy_load.statuses()[200]) >= 20,
            "writes to flow",
        )
        promoted: list[float] = []
        pair.switchover(promoted=lambda: promoted.append(time.monotonic()))
        wait_until(lambda: _word(single) == "read_only", "the proxied service to say read_only")
        proxy.switch(pair.primary.port)
        switched = time.monotonic()
        multi_first = wait_until(lambda: multi_load.first_success(promoted[0]), "a write (multi)")
        proxy_first = wait_until(lambda: proxy_load.first_success(switched), "a write (proxy)")
    return multi_load.answers(), proxy_load.answers(), multi_first, proxy_first


def write_switchovers(work: Path, rows: list[str], count: int) -> None:
    """Switchovers with writes in flight, as a real HA stack sees them: two services at
    once, one on a multi-host URL, one behind a single address (a TCP proxy that, like
    HAProxy with `on-marked-down shutdown-sessions`, closes every session when it starts
    routing to the new primary). Each under 6 writers (2 holding their transaction 0.2 s)."""
    pair = Pair(work / "ha-writes")
    create_table(pair.primary.url())
    pair.primary.wait_streaming_to(pair.standby)
    multi_answers: Counter[str] = Counter()
    proxy_answers: Counter[str] = Counter()
    after_promotion: list[float] = []
    after_switch: list[float] = []
    with TcpProxy(pair.primary.port) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        multi = ServiceProcess(pair.url(pair.standby, pair.primary), app=WRITES_APP)
        single = ServiceProcess(url, app=WRITES_APP)
        try:
            multi.start()
            single.start()
            for _ in range(count):
                answers, proxied, multi_first, proxy_first = _one_write_switchover(
                    pair, proxy, multi, single
                )
                multi_answers += answers
                proxy_answers += proxied
                after_promotion.append(multi_first)
                after_switch.append(proxy_first)
        finally:
            multi.stop()
            single.stop()
            pair.destroy()
    rows.append(f"\n| {count} switchovers, writes in flight | answers | first good write ms |")
    rows.append("|---|---|---|")
    rows.append(
        f"| multi-host URL | {_answers(multi_answers)} | "
        f"{_ms(after_promotion)} (median / max) after promotion |"
    )
    rows.append(
        f"| one address (proxy; sessions shut down at the switch) | {_answers(proxy_answers)} | "
        f"{_ms(after_switch)} (median / max) after the proxy routes to the new primary |"
    )


# -- silent failures: no RST, no error, nothing answers ---------------------------------

# What main did: asyncpg's sockets had neither keepalives nor a user timeout.
WITHOUT_TCP = "keepalives=0&tcp_user_timeout=0"
IDLE_BOUND = 90.0  # seconds we wait for idle dark connections to be noticed
WRITE_BOUND = 120.0  # seconds we wait for the first good write after the hole


def _counter(service: ServiceProcess, name: str) -> float:
    """A counter from /metrics (which never touches the database)."""
    answer = service.fetch("/metrics")
    assert answer is not None and answer[0] == 200, answer
    for family in text_string_to_metric_families(answer[1].decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise LookupError(name)


def _post(service: ServiceProcess, path: str, timeout: float = 60) -> str:
    """POST `path`: `200`, `503 <word or error>`, or `no answer`."""
    import http.client

    con = http.client.HTTPConnection("127.0.0.1", service.port, timeout=timeout)
    try:
        con.request("POST", path)
        response = con.getresponse()
        body = json.loads(response.read() or b"{}")
    except OSError:
        return "no answer"
    finally:
        con.close()
    if response.status == 200:
        return "200"
    return f"{response.status} {body.get('db') or body.get('error', '')}"


def _dark_idle(cluster: Cluster, query: str) -> tuple[str, str]:
    """Idle pooled connections black-holed (the flows forgotten; new connections work):
    (when the pool noticed, what the first write then got)."""
    create_table(cluster.url())
    service = ServiceProcess(f"{cluster.url()}?{query}" if query else cluster.url(), app=WRITES_APP)
    try:
        service.start()
        assert _post(service, "/write") == "200"
        with black_hole(cluster.port, existing_only=True) as held:
            count = len(held or ())
            start = time.perf_counter()
            try:
                wait_until(
                    lambda: _counter(service, "db_connections_lost_total") >= count,
                    "the dark connections to be dropped",
                    timeout=IDLE_BOUND,
                    interval=0.1,
                )
                noticed = f"all {count} dropped after {time.perf_counter() - start:.1f} s"
            except TimeoutError:
                noticed = f"{count} still established after {IDLE_BOUND:.0f} s"
            before = time.perf_counter()
            answer = _post(service, "/write")
            first = f"{answer} in {(time.perf_counter() - before) * 1000:.0f} ms"
    finally:
        service.stop()
    return noticed, first


def _dark_write(cluster: Cluster, query: str) -> tuple[str, str]:
    """A write sent on a black-holed idle connection right after the hole opens: (its
    answer and when, the first 200 after the hole with writes one after another)."""
    create_table(cluster.url())
    service = ServiceProcess(f"{cluster.url()}?{query}" if query else cluster.url(), app=WRITES_APP)
    try:
        service.start()
        assert _post(service, "/write") == "200"
        with black_hole(cluster.port, existing_only=True):
            start = time.perf_counter()
            answer = _post(service, "/write", timeout=WRITE_BOUND)
            first_answer = f"{answer} after {time.perf_counter() - start:.1f} s"
            answers = [answer]
            while answers[-1] != "200" and time.perf_counter() - start < WRITE_BOUND:
                answers.append(_post(service, "/write", timeout=WRITE_BOUND))
            elapsed = time.perf_counter() - start
        seen = ", ".join(f"{a} × {n}" for a, n in Counter(answers).items())
        recovered = (
            f"after {elapsed:.1f} s ({seen})"
            if answers[-1] == "200"
            else f"none in {elapsed:.0f} s"
        )
    finally:
        service.stop()
    return first_answer, recovered


def _frozen_lock(cluster: Cluster, timeout: str) -> str:
    """A handler holds SELECT … FOR UPDATE; the service is SIGSTOPped; when does another
    session's UPDATE of the row go through (counted from the SIGSTOP)?"""
    import signal

    url = cluster.url()
    create_table(url)
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute("INSERT INTO fault_writes DEFAULT VALUES RETURNING id").fetchone()
    assert row is not None
    env = {"DB_IDLE_IN_TRANSACTION_TIMEOUT": timeout, "SHUTDOWN_TIMEOUT": "1"}
    service = ServiceProcess(url, app=WRITES_APP, **env)
    try:
        service.start()
        assert service.process is not None
        held = socket.create_connection(("127.0.0.1", service.port))
        held.sendall(f"POST /lock/{row[0]}?hold=300 HTTP/1.1\r\nHost: f\r\n\r\n".encode())
        idle = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'service' AND state = 'idle in transaction'"
        )
        wait_until(lambda: cluster.query(idle) == 1, "the handler to hold the lock")
        os.kill(service.process.pid, signal.SIGSTOP)
        start = time.perf_counter()
        try:
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("SET statement_timeout = '60s'")
                other.execute("UPDATE fault_writes SET at = now() WHERE id = %s", row)
            result = f"went through {time.perf_counter() - start:.2f} s after the SIGSTOP"
        except psycopg.errors.QueryCanceled:
            result = "still waiting after 60 s (statement_timeout)"
        finally:
            os.kill(service.process.pid, signal.SIGCONT)
            held.close()
    finally:
        service.stop()
    return result


def silent(work: Path) -> list[str]:
    """The silent failures, each on a cluster of its own: without, then with protection."""
    reason = why_not()
    if reason is not None:
        raise SystemExit(f"scripts/faults --silent: {reason}")
    rows = [
        "| silent failure | before (no keepalives, no user timeout, "
        "no idle-in-transaction timeout) | now (the defaults) |",
        "|---|---|---|",
    ]
    results: dict[str, list[str]] = {}
    for label, query, timeout in (("before", WITHOUT_TCP, "0"), ("now", "", "5")):
        cluster = Cluster(work / f"silent-{label}").init().start()
        try:
            print(f"  {label}: idle connections black-holed", file=sys.stderr)
            noticed, first = _dark_idle(cluster, query)
            cluster.restart()  # the server's side of the dark connections goes too
            print(f"  {label}: a write on a black-holed connection", file=sys.stderr)
            answer, recovered = _dark_write(cluster, query)
            cluster.restart()
            print(f"  {label}: a frozen service holding a row lock", file=sys.stderr)
            lock = _frozen_lock(cluster, timeout)
        finally:
            cluster.destroy()
        results[label] = [noticed, first, answer, recovered, lock]
    labels = [
        "idle pooled connections black-holed (a NAT forgot the flows), no traffic",
        "... then the first write",
        "a write sent on a black-holed idle connection",
        "... the first 200 after the hole (writes one after another)",
        "service frozen (SIGSTOP) while its handler holds `SELECT … FOR UPDATE`: "
        "another session's UPDATE (now: `DB_IDLE_IN_TRANSACTION_TIMEOUT=5`)",
    ]
    for number, label in enumerate(labels):
        rows.append(f"| {label} | {results['before'][number]} | {results['now'][number]} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/faults", description=__doc__)
    parser.add_argument(
        "--switchovers", type=int, default=3, help="switchovers with writes in flight (3)"
    )
    parser.add_argument(
        "--only-writes", action="store_true", help="only the switchovers with writes in flight"
    )
    parser.add_argument(
        "--silent", action="store_true", help="only the silent failures (black holes, SIGSTOP)"
    )
    args = parser.parse_args()
    if args.silent:
        work = Path(tempfile.mkdtemp(prefix="service-faults-"))
        try:
            print("\n".join(silent(work)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    if args.only_writes:
        work = Path(tempfile.mkdtemp(prefix="service-faults-"))
        rows: list[str] = []
        try:
            write_switchovers(work, rows, args.switchovers)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("\n".join(rows))
        return 0
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
        cancelled: list[str] = []
        cancellations(cluster, cancelled)
        cluster.destroy()
        switchover(work, rows)
        rows.append(sigterm)
        rows.extend(cancelled)
        write_switchovers(work, rows, args.switchovers)
    finally:
        service.stop()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print(f"DB_READY_TIMEOUT={os.environ.get('DB_READY_TIMEOUT', '0.8')} s, {PROBES} probes each")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
