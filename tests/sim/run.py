"""Run many seeded schedules; print a failing one with its seed, shrink it, print that.

python -m tests.sim.run --schedules 10000 --seed 1 --faults 30 --workers 2
python -m tests.sim.run --seed S --faults 30            # replay one schedule
python -m tests.sim.run --seed S --faults 30 --keep 3,17,40   # replay a shrunk one
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Iterator
from typing import Any

from tests.sim.schedule import Result, run_schedule, shrink


def _one(job: tuple[int, int, dict[str, Any]]) -> Result:
    seed, faults, opts = job
    return run_schedule(seed, faults, opts=opts)


def report(result: Result, faults: int, opts: dict[str, Any], do_shrink: bool) -> None:
    print(f"FAIL seed {result.seed} (--faults {faults}): {result.message}")
    print("actions:")
    for i, a in enumerate(result.actions):
        print(f"  [{i}] {a}")
    print("last trace lines:")
    for line in result.trace[-40:]:
        print(f"  {line}")
    if do_shrink:
        keep, shrunk = shrink(result.seed, faults, opts)
        print(f"shrunk to {len(keep)} actions: {shrunk.message}")
        for i, a in zip(keep, shrunk.actions, strict=True):
            print(f"  [{i}] {a}")
        print("trace:")
        for line in shrunk.trace[-60:]:
            print(f"  {line}")
        print(
            f"replay: python -m tests.sim.run --seed {result.seed} --faults {faults} --keep {','.join(map(str, keep))}"
        )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim.run")
    p.add_argument("--schedules", type=int, default=1)
    p.add_argument("--seed", type=int, default=1, help="the first seed (schedule k uses seed+k)")
    p.add_argument("--faults", type=int, default=30)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--keep", help="comma-separated action indexes to keep (a shrunk schedule)")
    p.add_argument("--no-shrink", action="store_true")
    p.add_argument("--no-offline-follow", action="store_true", help="emulate the old client (no file side offline)")
    p.add_argument("--max-failures", type=int, default=1, help="stop after this many failures (0: never)")
    args = p.parse_args(argv)
    opts: dict[str, Any] = {"no_offline_follow": True} if args.no_offline_follow else {}
    if args.keep is not None:
        keep = [int(x) for x in args.keep.split(",") if x]
        result = run_schedule(args.seed, args.faults, keep, opts)
        if result.ok:
            print(f"seed {args.seed}: ok")
            return 0
        report(result, args.faults, opts, False)
        return 1
    start = time.monotonic()
    jobs = [(args.seed + k, args.faults, opts) for k in range(args.schedules)]
    failures: list[Result] = []
    done = 0
    faults_total = 0
    results: Iterator[Result]
    if args.workers > 1:
        pool = multiprocessing.Pool(args.workers)
        results = pool.imap_unordered(_one, jobs, chunksize=4)
    else:
        pool = None
        results = map(_one, jobs)
    try:
        for result in results:
            done += 1
            faults_total += result.faults
            if not result.ok:
                failures.append(result)
                if len(failures) == 1 or args.max_failures == 0 or len(failures) <= args.max_failures:
                    print(f"FAIL seed {result.seed}: {result.message.splitlines()[0]}")
                if args.max_failures and len(failures) >= args.max_failures:
                    break
    finally:
        if pool is not None:
            pool.terminate()
    elapsed = time.monotonic() - start
    print(
        f"schedules run: {done}; faults per schedule: {faults_total / max(done, 1):.1f} "
        f"(--faults {args.faults}); time: {elapsed:.1f} s; failures: {len(failures)}"
    )
    if failures:
        report(min(failures, key=lambda r: r.seed), args.faults, opts, not args.no_shrink)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
