"""Where throwaway clusters live (service/testing/scratch.py): tmpfs when there is room;
what a killed run left there is stopped and removed by the next."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from service.testing import scratch
from service.testing.cluster import Cluster
from service.testing.polling import wait_until


def test_tmpfs_is_used_only_with_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scratch, "TMPFS", tmp_path)
    assert scratch.scratch_root() == tmp_path
    monkeypatch.setattr(scratch, "TMPFS_MIN_FREE", 1 << 60)  # more than any disk has
    assert scratch.scratch_root() != tmp_path
    monkeypatch.setattr(scratch, "TMPFS", tmp_path / "absent")
    assert scratch.scratch_root() != tmp_path / "absent"


def test_a_killed_run_s_directory_is_removed_and_its_server_stopped(
    tmp_path: Path, cluster_template: Path
) -> None:
    gone = subprocess.Popen(["true"])  # a pid that no longer runs
    gone.wait()
    stale = tmp_path / f"{scratch.PREFIX}{gone.pid}-abc"
    postmaster = Cluster(stale / "suite").init(template=cluster_template).start().pids()[0]
    mine = scratch.scratch_directory(tmp_path)
    again = scratch.scratch_directory(tmp_path)  # this process runs: `mine` is kept
    assert not stale.exists()
    wait_until(lambda: not Path(f"/proc/{postmaster}").exists(), "the stale server's exit")
    assert mine.exists() and again.exists()
    assert mine.name.startswith(f"{scratch.PREFIX}{os.getpid()}-")
    scratch.remove_scratch(mine)
    scratch.remove_scratch(again)
    assert not mine.exists() and not again.exists()
