"""Silently drop the TCP packets of a local PostgreSQL port, as a vanished peer looks; then undo.

    with black_hole(port):                      # every connection to or from 127.0.0.1:port
    with black_hole(port, client_port=p):       # only the connection whose client end is p
    with black_hole(port, existing_only=True):  # the connections open now; new ones work

nftables, one table per hole: set in one transaction, undone by deleting the table, and
expired by the kernel after `max_seconds` even if the process that set it was killed.
Packets are dropped on the INPUT hook of `lo`: each leaves its sender normally and vanishes
before the receiver sees it (no RST, no ICMP), which is what a NAT that forgot a flow, a
failed-over address or a vanished VM look like. tc netem is not built into this kind of
kernel; nftables is.

Needs root and the `nft` binary: `scripts/test` and `scripts/faults` install the Debian
package when it is missing and they run as root. `why_not()` says why a hole cannot be made
here (for pytest.skip). Never on the shared server's port 5432 (CI's second pass uses it):
only a port of a cluster the caller owns.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

SHARED_PORT = 5432
_COUNTER = itertools.count()
INSTALL = "run scripts/test as root (it installs the nftables package), or apt-get install nftables"


def _nft(
    *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nft", *args], check=check, capture_output=True, text=True, timeout=30, input=stdin
    )


def why_not() -> str | None:
    """None when black_hole() works here, else a one-line reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "a black hole needs root (netfilter rules)"
    if shutil.which("nft") is None:
        return f"no nft binary: {INSTALL}"
    probe = f"bh_probe_{os.getpid()}"
    try:
        done = _nft("add", "table", "inet", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nft does not run: {exc}"
    if done.returncode != 0:
        return f"the kernel refuses nftables tables: {done.stderr.strip()}"
    _nft("delete", "table", "inet", probe, check=False)
    return None


def sweep_stale() -> list[str]:
    """Delete the bh_* tables of processes that no longer exist (a killed test run)."""
    done = _nft("list", "tables", check=False)
    removed = []
    for name, pid in re.findall(r"^table inet (bh_(\d+)_\d+)$", done.stdout, re.M):
        if not os.path.exists(f"/proc/{pid}"):
            _nft("delete", "table", "inet", name, check=False)
            removed.append(name)
    return removed


def client_ports(port: int) -> set[int]:
    """Client ports of the established IPv4 connections to 127.0.0.1:`port` now."""
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "01" and fields[2] == f"0100007F:{port:04X}":
                ports.add(int(fields[1].split(":")[1], 16))
    return ports


@contextlib.contextmanager
def black_hole(
    port: int,
    *,
    client_port: int | None = None,
    existing_only: bool = False,
    max_seconds: int = 300,
) -> Iterator[set[int] | None]:
    """Drop every TCP packet to and from 127.0.0.1:`port` on lo, without a trace.

    client_port: only that connection (an admin connection keeps working).
    existing_only: only the connections established when the hole opens (a NAT or a
    firewall that forgot its flows); new connections work. Otherwise new connects hang too
    (a vanished host). Yields the client ports held, or None for the whole port.
    """
    if port == SHARED_PORT:
        raise ValueError("never black-hole port 5432: the shared server; use a Cluster's port")
    victims: set[int] | None = None
    if existing_only:
        victims = client_ports(port)
    elif client_port is not None:
        victims = {client_port}
    if victims is not None and not victims:
        yield victims
        return
    name = f"bh_{os.getpid()}_{next(_COUNTER)}"
    ttl = f"timeout {max_seconds}s"
    if victims is None:
        elements = f"add element inet {name} ports {{ {port} {ttl} }}\n"
    else:
        pairs = ", ".join(f"{port} . {c} {ttl}" for c in sorted(victims))
        elements = f"add element inet {name} pairs {{ {pairs} }}\n"
    ruleset = (
        f"table inet {name} {{\n"
        "  set ports { type inet_service; flags timeout; }\n"
        "  set pairs { type inet_service . inet_service; flags timeout; }\n"
        "  chain input { type filter hook input priority raw; policy accept;\n"
        "    iif lo tcp dport @ports drop\n"
        "    iif lo tcp sport @ports drop\n"
        "    iif lo tcp dport . tcp sport @pairs drop\n"  # client -> server
        "    iif lo tcp sport . tcp dport @pairs drop\n"  # server -> client
        "  }\n"
        "}\n" + elements
    )
    _nft("-f", "-", stdin=ruleset)  # one transaction: both directions at once
    try:
        yield victims
    finally:
        _nft("delete", "table", "inet", name)
