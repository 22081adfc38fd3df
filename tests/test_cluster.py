"""Cluster (service/testing/cluster.py): what a test leaves behind never outlives it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from service.testing.cluster import Cluster


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_destroy_ends_a_server_a_failed_test_left_hung(
    scratch_dir: Path, cluster_template: Path
) -> None:
    cluster = Cluster(scratch_dir / "hung").init(template=cluster_template).start()
    pids = cluster.pids()
    os.kill(pids[0], signal.SIGSTOP)  # stopped behind pause()'s back, as by a test that failed
    cluster.destroy()
    assert [pid for pid in pids if _alive(pid)] == []
    assert not cluster.data.exists()


def test_pause_and_resume_skip_a_backend_that_ended(
    scratch_dir: Path, cluster_template: Path
) -> None:
    cluster = Cluster(scratch_dir / "ended").init(template=cluster_template).start()
    try:
        listed = cluster.pids()
        gone = max(listed) + 1_000_000  # no such process
        cluster.pids = lambda: [*listed, gone]  # type: ignore[method-assign]
        cluster.pause()
        cluster.resume()
        assert cluster.query("SELECT 1") == 1
    finally:
        cluster.destroy()
