"""What each HTTP implementation does with a huge request head, a half-sent request and
clients that reset their connections.

    .venv/bin/python scripts/http_limits.py [--header-mib 64] [--wait 20] [--resets 20]

For uvicorn's httptools and h11 protocols as shipped, and for ours
(service.web.http.BoundedHttpToolsProtocol, what `python -m service serve` runs), each with
the keep-alive timeout serve sets (HTTP_KEEPALIVE_TIMEOUT, 75 s): the process's RSS before
and after one request with a HEADER_MIB header, the answer, how long a connection that sent
half a request line (or nothing) stays open, and the RSS after RESETS seconds of clients
that each send one keep-alive request, read the answer and close with a RST (SO_LINGER 0,
as a client closing with unread data does). No database is needed: the service starts
without one and the requests hit liveness.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.testing.cluster import free_port  # noqa: E402 - after the sys.path line

PROTOCOLS = {
    "httptools (uvicorn)": "'httptools'",
    "h11 (uvicorn, 16 KiB default)": "'h11'",
    "ours (bounded httptools)": "BoundedHttpToolsProtocol",
}
SERVE = """
import uvicorn
from service.web.http import BoundedHttpToolsProtocol
uvicorn.run("service.web.app:create_app", factory=True, host="127.0.0.1", port={port},
            loop="uvloop", http={http}, log_level="error", lifespan="on",
            timeout_keep_alive={keep_alive})
"""
HEALTH = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not answer")


def big_head(port: int, size: int) -> tuple[str, int]:
    """(status line or what happened, bytes the server took before it answered/closed)."""
    head = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: "
    chunk = b"a" * (1 << 20)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(head)
            while sent < size:
                s.sendall(chunk[: size - sent])
                sent += min(len(chunk), size - sent)
            s.sendall(b"\r\n\r\n")
        except OSError as exc:
            answer = _read_status(s)
            return f"{answer or type(exc).__name__} after {sent >> 10} KiB sent", sent
        return _read_status(s) or "closed without an answer", sent


def _read_status(s: socket.socket) -> str:
    try:
        return s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError:
        return ""


def held_open(port: int, payload: bytes, wait: float) -> str:
    """Seconds until the server closed a connection that sent only `payload`."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        s.settimeout(wait)
        started = time.monotonic()
        try:
            data = s.recv(200)
        except TimeoutError:
            return f"still open after {wait:.0f} s"
        except OSError as exc:
            return f"{type(exc).__name__} after {time.monotonic() - started:.1f} s"
        what = data.split(b"\r\n", 1)[0].decode() if data else "closed"
        return f"{what} after {time.monotonic() - started:.1f} s"


def resets(port: int, seconds: float, clients: int = 16) -> int:
    """Connections made, each one request on keep-alive then reset, for `seconds`."""

    async def client(deadline: float) -> int:
        made = 0
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEALTH)
            await reader.readuntil(b"\r\n\r\n")
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            writer.close()
            made += 1
        return made

    async def run() -> int:
        deadline = time.monotonic() + seconds
        return sum(await asyncio.gather(*(client(deadline) for _ in range(clients))))

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--header-mib", type=int, default=64)
    parser.add_argument("--wait", type=float, default=20.0)
    parser.add_argument("--resets", type=float, default=20.0, help="seconds of resetting clients")
    args = parser.parse_args()
    keep_alive = float(os.environ.get("HTTP_KEEPALIVE_TIMEOUT", "75"))
    env = {**os.environ, "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}
    env["PYTHONPATH"] = str(ROOT)
    for name, http in PROTOCOLS.items():
        port = free_port()
        code = SERVE.format(port=port, http=http, keep_alive=keep_alive)
        process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
        try:
            wait_listening(port, process)
            before, _ = rss_kib(process.pid)
            answer, _ = big_head(port, args.header_mib << 20)
            time.sleep(0.5)
            after, peak = rss_kib(process.pid)
            half = held_open(port, b"GET /api/v1/hea", args.wait)
            silent = held_open(port, b"", args.wait)
            print(f"{name}:")
            print(f"  {args.header_mib} MiB header: {answer}")
            print(
                f"  RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
                f"(+{(after - before) / 1024:.1f}), peak {peak / 1024:.1f} MiB"
            )
            print(f"  half a request line: {half}")
            print(f"  nothing sent: {silent}", flush=True)
            before, _ = rss_kib(process.pid)
            made = resets(port, args.resets)
            after, _ = rss_kib(process.pid)
            print(
                f"  {made:,} connections reset after one request each in {args.resets:.0f} s "
                f"(keep-alive {keep_alive:g} s): RSS {before / 1024:.1f} -> "
                f"{after / 1024:.1f} MiB (+{(after - before) / 1024:.1f})",
                flush=True,
            )
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
