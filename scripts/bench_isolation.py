"""`scripts/bench --isolation`: what a test's own database costs, in real pytest runs.

Runs examples/orders (40 tests using `client` and `db`, the README's feature) with the
service.testing plugin, its migration beside the baseline in a folder of its own, and reads
the plugin's record of each `database_url` set-up and teardown (--service-timings). Variants,
alternated round by round so that a busy neighbour hits them alike:

- clones made in the test's own set-up and dropped in its teardown (service_clones_ahead=0),
  the cluster's data on ext4 (the temp directory): the old way, with one admin connection
  (the old fixture opened one per statement, 15-20 ms more);
- the same on tmpfs (/dev/shm);
- clones made 2 ahead in the background, on tmpfs (the default) and on ext4;
- the default with two pytest-xdist workers (each has its own cluster and pool).

Set-up and teardown are what the test waits for; `wall` is the whole pytest run (start-up,
initdb, the template's migrations and the 40 tests).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.testing.scratch import scratch_root  # noqa: E402 - after the sys.path line

EXAMPLE = ROOT / "examples" / "orders"


@dataclass
class Variant:
    name: str
    ahead: int
    scratch: str  # "tmpfs" or "ext4"
    workers: int = 0
    setups: list[float] = field(default_factory=list)
    teardowns: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)


def migrations(into: Path) -> Path:
    folder = into / "sql"
    folder.mkdir()
    for path in [*(ROOT / "sql").glob("0001_*"), *(EXAMPLE / "sql").glob("*.sql")]:
        shutil.copy(path, folder)
    return folder


def run(variant: Variant, sql: Path, work: Path, dirs: dict[str, Path]) -> None:
    timings = work / f"timings-{variant.name}.jsonl"
    timings.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", str(EXAMPLE), "-q", "-p", "no:cacheprovider"]
    command += ["--service-app", "myapp:app", "--service-migrations", str(sql)]
    command += ["-o", f"service_clones_ahead={variant.ahead}"]
    command += ["-o", f"service_scratch_dir={dirs[variant.scratch]}"]
    command += ["--service-timings", str(timings)]
    if variant.workers:
        command += ["-n", str(variant.workers), "--dist", "load"]
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    variant.walls.append(time.perf_counter() - started)
    if done.returncode != 0:
        raise SystemExit(f"{variant.name}: pytest failed\n{done.stdout}\n{done.stderr}")
    for line in timings.read_text().splitlines():
        record = json.loads(line)
        variant.setups += record["setups"]
        variant.teardowns += record["teardowns"]


def ms(seconds: list[float], quantile: float) -> str:
    ordered = sorted(seconds)
    if quantile == 0.5:
        return f"{statistics.median(ordered) * 1000:.1f}"
    return f"{ordered[max(0, round(quantile * len(ordered)) - 1)] * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench --isolation", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant")
    args = parser.parse_args(argv)
    tmpfs = scratch_root()
    if tmpfs != Path("/dev/shm"):
        print(f"note: no tmpfs with room here; the 'tmpfs' rows use {tmpfs}", file=sys.stderr)
    variants = [
        Variant("in the test, ext4", ahead=0, scratch="ext4"),
        Variant("in the test, tmpfs", ahead=0, scratch="tmpfs"),
        Variant("2 ahead, ext4", ahead=2, scratch="ext4"),
        Variant("2 ahead, tmpfs (default)", ahead=2, scratch="tmpfs"),
        Variant("2 ahead, tmpfs, -n 2", ahead=2, scratch="tmpfs", workers=2),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as work_dir:
        work = Path(work_dir)
        sql = migrations(work)
        dirs = {"tmpfs": tmpfs, "ext4": Path(tempfile.gettempdir())}
        for round_number in range(args.rounds):
            order = variants if round_number % 2 == 0 else list(reversed(variants))
            for variant in order:
                print(f"round {round_number + 1}: {variant.name}", file=sys.stderr, flush=True)
                run(variant, sql, work, dirs)
    print(
        f"\nisolation: examples/orders, {len(variants[0].setups) // args.rounds} tests with "
        f"client and db per run, {args.rounds} rounds alternating; ms per test\n"
    )
    print("| clones made | set-up median | p90 | teardown median | p90 | wall (median) |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        wall = statistics.median(v.walls)
        print(
            f"| {v.name} | {ms(v.setups, 0.5)} | {ms(v.setups, 0.9)} "
            f"| {ms(v.teardowns, 0.5)} | {ms(v.teardowns, 0.9)} | {wall:.1f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
