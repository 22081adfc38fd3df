"""scripts/dev's database: an embedded cluster whose data and port are kept between runs,
announced to the checkout's other terminals through `.data/dev.env` while it runs.

    python -m service.testing.devdb --data .data/postgres --env-file .data/dev.env

prints the URL once the server takes connections, writes `DATABASE_URL=…` to the env file
(which Settings reads after the environment and `.env`: `python -m service migrate` and
`serve` in another terminal find the database without a URL copied), and on SIGINT or
SIGTERM removes the file and stops the server. The port is the last run's, kept in
`DATA.port`, unless something else took it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path

from .cluster import Cluster, free_port

HEADER = "# written by scripts/dev while its database runs (pid {pid}); removed when it stops\n"


def port_is_free(port: int) -> bool:
    """Whether a server could listen on `port` (with SO_REUSEADDR, as PostgreSQL does: the
    last run's closed connections do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stable_port(data: Path) -> int:
    """The port `data`'s server had last time (kept in DATA.port) if it is free, else a
    free one, kept for next time: a URL written down once keeps working."""
    kept = data.parent / f"{data.name}.port"
    try:
        port = int(kept.read_text())
    except (OSError, ValueError):
        port = 0
    if port and port_is_free(port):
        return port
    if port:
        print(f"port {port} is taken: the dev database moves to another", file=sys.stderr)
    port = free_port()
    data.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(f"{port}\n")
    return port


def announce(env_file: Path, url: str) -> None:
    """Write DATABASE_URL to `env_file` whole (a reader never sees half of it)."""
    env_file.parent.mkdir(parents=True, exist_ok=True)
    partial = env_file.with_name(f".{env_file.name}.{os.getpid()}")
    partial.write_text(HEADER.format(pid=os.getpid()) + f"DATABASE_URL={url}\n")
    partial.replace(env_file)


def withdraw(env_file: Path, url: str) -> None:
    """Remove `env_file` if it still announces `url` (not another run's)."""
    try:
        if f"DATABASE_URL={url}\n" in env_file.read_text():
            env_file.unlink()
    except FileNotFoundError:
        pass


def run(data: Path, port: int, env_file: Path | None) -> int:
    cluster = Cluster(data, port or stable_port(data), fast=False).init()
    cluster.start()
    url = cluster.url()
    try:
        if env_file is not None:
            announce(env_file, url)
        print(url, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        if env_file is not None:
            withdraw(env_file, url)
        cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.testing.devdb", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(".data/postgres"))
    parser.add_argument("--port", type=int, default=0, help="0: the last run's port if free")
    parser.add_argument("--env-file", type=Path, help="announce DATABASE_URL here while running")
    args = parser.parse_args(argv)
    # Blocked before the server starts, so a signal during start-up waits for sigwait.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    return run(args.data, args.port, args.env_file)


if __name__ == "__main__":
    sys.exit(main())
