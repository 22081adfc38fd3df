"""`python -m service serve` in a subprocess, as a kubelet or a load balancer sees it.

One runner for the fault tests, scripts/bench and scripts/faults: start it with an
environment, wait for the first 200 from /api/v1/ready, fetch, read its RSS, stop it with
SIGTERM. Its output goes to the terminal, or to a file read back by `output()` (a file,
not a pipe: a chatty service never blocks on a pipe nobody drains; opened for appending,
so reading it back never moves where the service writes).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.cluster import free_port
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
READY = "/api/v1/ready"
HEALTH = "/api/v1/health"


class ServiceProcess:
    """The service in a subprocess on a free port; its pid is the uvicorn process."""

    def __init__(
        self,
        database_url: str,
        *,
        capture_output: bool = False,
        app: str | None = None,
        ready_path: str = READY,
        uvicorn: bool = False,
        **env: str,
    ) -> None:
        self.port = free_port()
        self.app = app  # `serve --app MODULE:FACTORY`; None: the service itself
        # Plain `uvicorn --factory` (uvloop, httptools) instead of our serve command: an app
        # that is not the service, served without our protocol (scripts/bench's ceiling).
        self.uvicorn = uvicorn
        self.ready_path = ready_path  # the first 200 here means started
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "ACCESS_LOG": "false",
            "LOG_LEVEL": "warning",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        if capture_output:
            fd, name = tempfile.mkstemp(prefix="service-", suffix=".log")
            os.close(fd)
            self._log = Path(name)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._log is not None:
            self._log.unlink(missing_ok=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60, interval: float = 0.005) -> float:
        """Start it; seconds from exec to the first 200 from `ready_path`."""
        started = time.perf_counter()
        log = None if self._log is None else self._log.open("ab")
        try:
            command = [sys.executable, "-m", "service", "serve"]
            if self.app is not None:
                command += ["--app", self.app]
            if self.uvicorn:
                assert self.app is not None
                command = [sys.executable, "-m", "uvicorn", self.app, "--factory"]
                command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
                command += ["--log-level", "warning", "--port", str(self.port)]
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=None if log is None else subprocess.STDOUT,
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own copy
        wait_until(
            self._ready, "the service's first 200 from /ready", timeout=timeout, interval=interval
        )
        return time.perf_counter() - started

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the service exited with {self.process.returncode}\n{self.output()}"
            )
        return self.get(self.ready_path) == 200

    def get(self, path: str) -> int | None:
        answer = self.fetch(path)
        return None if answer is None else answer[0]

    def fetch(self, path: str, timeout: float = 5) -> tuple[int, bytes] | None:
        """(status, body), or None while nothing answers."""
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            con.request("GET", path)
            response = con.getresponse()
            return response.status, response.read()
        except OSError:
            return None
        finally:
            con.close()

    def rss_mb(self) -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]
        return kb / 1024

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit status; `subprocess.TimeoutExpired` if it outlives `timeout`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM if it still runs; SIGKILL if that takes over 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.terminate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        """What it wrote to stdout and stderr so far ('' unless `capture_output`)."""
        if self._log is None:
            return ""
        return self._log.read_bytes().decode(errors="replace")


def read_response(reader: Any) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length from a stream (`sock.makefile("rb")`):
    (status, body). For raw-socket tests (pipelining, a head sent without its body)."""
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, reader.read(length)
