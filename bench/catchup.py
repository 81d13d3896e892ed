"""Catch-up only: one pre-written file through tcppipe (or tail -F | socat), repeated.

Quicker to iterate with than ``bench/run``: no latency probes, no writer, no
kill -9 runs. Prints MB/s and CPU s/GB of each side per run, then medians.
``--tree`` runs another checkout's programs (its ``.venv/bin``) for A/B pairs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench


def one(kind: str, root: Path, data: Path, total: int, bin_dir: Path, index: int) -> tuple[float, list[float]]:
    """(MB/s, CPU seconds per GB of each process) of one catch-up."""
    work, origin, dest = bench.new_pipe(root, f"{kind}-{index}")
    origin.unlink()
    os.link(data, origin)  # the same bytes every run, no writing between runs
    contestant: bench.Contestant = bench.Tcppipe(work) if kind == "tcppipe" else bench.SocatFloor(work)
    saved = bench.BIN
    bench.BIN = bin_dir
    try:
        started = time.perf_counter()
        contestant.start(origin, dest)
        if not bench.wait_for_growth(dest, total, 3.0, 600, contestant.died):
            log = (work / f"{kind}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"{kind}: catch-up stopped at {bench.file_size(dest)} of {total} bytes\n{log}")
        elapsed = time.perf_counter() - started
        cpu = [bench.cpu_seconds(p) / (total / 1e9) for p in contestant.pids()]
    finally:
        bench.BIN = saved
        contestant.stop()
    shutil.rmtree(work, ignore_errors=True)
    return total / elapsed / 1e6, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each contestant, alternating (3)")
    parser.add_argument("--only", default="tcppipe,socat", help="contestants, in turn (tcppipe,socat)")
    parser.add_argument("--tree", action="append", default=[], help="another checkout to run as tcppipe too")
    args = parser.parse_args()
    total_wanted = args.mb * 1024 * 1024
    root = Path(tempfile.mkdtemp(prefix="tcppipe-catchup."))
    here = Path(sys.executable).parent
    kinds = [(k, here) for k in args.only.split(",")]
    kinds += [("tcppipe", Path(t).resolve() / ".venv" / "bin") for t in args.tree]
    results: dict[int, list[tuple[float, list[float]]]] = {i: [] for i in range(len(kinds))}
    try:
        data = root / "data.log"
        total = bench.make_data(data, total_wanted)
        subprocess.run(["cat", str(data)], stdout=subprocess.DEVNULL, check=True)  # in the page cache
        for run in range(args.runs):
            for i, (kind, bin_dir) in enumerate(kinds):
                mb_s, cpu = one(kind, root, data, total, bin_dir, run * len(kinds) + i)
                results[i].append((mb_s, cpu))
                label = kind if bin_dir == here else f"{kind}@{bin_dir.parent.parent}"
                print(f"{label:<30} {mb_s:8.1f} MB/s  CPU s/GB " + " ".join(f"{c:.2f}" for c in cpu), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("medians:")
    for i, (kind, bin_dir) in enumerate(kinds):
        rows = results[i]
        label = kind if bin_dir == here else f"{kind}@{bin_dir.parent.parent}"
        sides = len(rows[0][1])
        cpus = [statistics.median(r[1][s] for r in rows if len(r[1]) > s) for s in range(sides)]
        print(
            f"{label:<30} {statistics.median(r[0] for r in rows):8.1f} MB/s  CPU s/GB "
            + " ".join(f"{c:.2f}" for c in cpus)
            + f" (sum {sum(cpus):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
