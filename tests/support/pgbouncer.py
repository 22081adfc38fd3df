"""A transaction-mode PgBouncer in front of a cluster, from the Debian package's binary.

Used by tests/test_pgbouncer.py and tests/test_ha.py (`.ci/run` installs the package; the
tests skip, saying why, where the binary is absent). It runs as the cluster's
unprivileged user, since PgBouncer refuses to run as root.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.cluster import _server_user, free_port
from tests.support.polling import wait_until

BINARY = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
MISSING = "no pgbouncer binary (apt-get install -y pgbouncer; .ci/run does)"

CONFIG = """\
[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
server_login_retry = 1
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
{extra}
"""


def version() -> tuple[int, int]:
    assert BINARY is not None
    out = subprocess.run([BINARY, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {log.read_text() if log.exists() else ''}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, "pgbouncer to listen", timeout=15)


@contextmanager
def pgbouncer(server_port: int, directory: Path) -> Iterator[str]:
    """PgBouncer in front of 127.0.0.1:`server_port`, configured in `directory`; its URL."""
    assert BINARY is not None, MISSING
    directory.mkdir()
    port = free_port()
    # 1.21+ can track prepared statements (1.22+ does by default): turn it off, so what
    # we show is what the service must cope with on any PgBouncer.
    extra = "max_prepared_statements = 0" if version() >= (1, 21) else ""
    (directory / "pgbouncer.ini").write_text(
        CONFIG.format(server_port=server_port, port=port, directory=directory, extra=extra)
    )
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    user = _server_user()
    kwargs = {}
    if user is not None:
        for path in (directory, *directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    process = subprocess.Popen(
        [BINARY, str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kwargs,
    )
    try:
        _wait_listening(port, process, directory / "pgbouncer.log")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
