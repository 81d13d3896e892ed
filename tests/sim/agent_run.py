"""Run many seeded schedules of the host agent's discovery (tests/sim/agent.py), in both modes.

python -m tests.sim.agent_run --schedules 5000 --seed 1 --workers 2
python -m tests.sim.agent_run --seed S --mode no-igen                 # replay one schedule
python -m tests.sim.agent_run --seed S --mode no-igen --keep 3,17,40  # replay a shrunk one
python -m tests.sim.agent_run --legacy-discovery OLD.py ...           # an older discovery.py

Rule 1: schedule k of a run is seed+k, run once with inode generation numbers
and once without; a failure prints its seed, mode, actions and the replay
command (shrunk, unless --no-shrink).

Rule 2 (an older discovery.py): ``--legacy-discovery`` loads the API before the
claims were checked (decide({path: inode}, running, now), claim(path, inodes),
admits(path, inode)) from a file, fed as that version's host agent fed it:
at a restart, the inodes a status file held, and a let-go generation only where
a matching path has the same inode generation; nothing when a pipe lets go or ends.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from types import ModuleType
from typing import Any

from tcppipe.discovery import Identify, Inode, Seen
from tcppipe.tailer import Finished, History
from tests.sim.agent import GRACE_S, RETRY_S, CurrentRules, Result, Rules, run_schedule, shrink

MODES = {"igen": True, "no-igen": False}


class LegacyRules:
    """An older ``Discovery`` (inode numbers only) behind the model agent's ``Rules``."""

    def __init__(self, module: ModuleType) -> None:
        self.discovery: Any = module.Discovery(GRACE_S, RETRY_S)

    def restarted(
        self, statuses: Mapping[str, History], drained: AbstractSet[str], found: Mapping[str, Seen], identify: Identify
    ) -> None:
        let_go: dict[Inode, tuple[str, int]] = {}
        for origin in sorted(statuses):
            history = statuses[origin]
            listed = [r.ident for r in history.held]
            if history.position is not None:
                listed.append(history.position[0])
            self.discovery.claim(origin, [(i.dev, i.ino) for i in listed])
            for f in history.finished:
                if f.igen is not None:
                    let_go.setdefault((f.dev, f.ino), (origin, f.igen))
        for path, seen in found.items():
            owner = let_go.get(seen.inode)
            got = identify(path, 0)
            if owner is not None and got is not None and got[0] == owner[1]:
                self.discovery.claim(owner[0], [seen.inode])

    def let_go(self, path: str, finished: Sequence[Finished]) -> None:
        pass

    def pipe_ended(self, path: str, history: History, drained: bool) -> None:
        pass

    def decide(
        self, found: Mapping[str, Seen], running: Mapping[str, Iterable[Inode]], now: float, identify: Identify
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        decision = self.discovery.decide({p: s.inode for p, s in found.items()}, running, now)
        return tuple(decision.start), tuple(decision.gone), ()

    def admits(self, path: str, seen: Seen, identify: Identify) -> bool:
        return bool(self.discovery.admits(path, seen.inode))

    def failed(self, path: str, now: float) -> None:
        self.discovery.failed(path, now)


@functools.cache
def _legacy_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("legacy_discovery", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rules_factory(legacy: str | None) -> Callable[[], Rules]:
    if legacy is None:
        return CurrentRules
    module = _legacy_module(legacy)
    return lambda: LegacyRules(module)


def _one(job: tuple[int, bool, int, str | None, bool]) -> Result:
    seed, with_igen, steps, legacy, known_gaps = job
    return run_schedule(seed, with_igen, steps, make_rules=rules_factory(legacy), known_gaps=known_gaps)


def _mode(with_igen: bool) -> str:
    return "igen" if with_igen else "no-igen"


def report(result: Result, steps: int, legacy: str | None, do_shrink: bool, known_gaps: bool = True) -> None:
    mode = _mode(result.with_igen)
    print(f"FAIL seed {result.seed} --mode {mode} (--steps {steps}): {result.message}")
    keep: list[int] | None = None
    if do_shrink:
        keep, shrunk = shrink(result.seed, result.with_igen, steps, rules_factory(legacy), known_gaps=known_gaps)
        print(f"shrunk to {len(keep)} actions: {shrunk.message}")
        result = shrunk
    print("actions:")
    for i, a in enumerate(result.actions):
        print(f"  [{keep[i] if keep is not None else i}] {a}")
    print("trace (last 40):")
    for line in result.trace[-40:]:
        print(f"  {line}")
    extra = f" --legacy-discovery {legacy}" if legacy else ""
    extra += "" if known_gaps else " --strict"
    kept = f" --keep {','.join(map(str, keep))}" if keep is not None else ""
    print(f"replay: python -m tests.sim.agent_run --seed {result.seed} --mode {mode} --steps {steps}{kept}{extra}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim.agent_run")
    p.add_argument("--schedules", type=int, default=1, help="schedules per mode")
    p.add_argument("--seed", type=int, default=1, help="the first seed (schedule k uses seed+k)")
    p.add_argument("--steps", type=int, default=80, help="actions per schedule")
    p.add_argument("--mode", choices=[*MODES, "both"], default="both")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--keep", help="comma-separated action indexes to keep (a shrunk schedule)")
    p.add_argument("--no-shrink", action="store_true")
    p.add_argument("--legacy-discovery", metavar="FILE", help="an older discovery.py (Rule 2)")
    p.add_argument("--strict", action="store_true", help="fail on the known gap too (unknowable, Rule 4 of agent.py)")
    args = p.parse_args(argv)
    modes = [True, False] if args.mode == "both" else [MODES[args.mode]]
    legacy: str | None = args.legacy_discovery
    if args.keep is not None:
        keep = [int(x) for x in args.keep.split(",") if x]
        for with_igen in modes:
            result = run_schedule(args.seed, with_igen, args.steps, keep, rules_factory(legacy), not args.strict)
            if not result.ok:
                report(result, args.steps, legacy, False, not args.strict)
                return 1
            print(f"seed {args.seed} {_mode(with_igen)}: ok")
        return 0
    start = time.monotonic()
    known_gaps = not args.strict
    jobs = [(args.seed + k, m, args.steps, legacy, known_gaps) for k in range(args.schedules) for m in modes]
    failures: list[Result] = []
    done = lifetimes = exempt = 0
    pool = multiprocessing.Pool(args.workers) if args.workers > 1 else None
    try:
        results = pool.imap(_one, jobs, chunksize=16) if pool is not None else map(_one, jobs)
        for result in results:
            done += 1
            lifetimes += result.lifetimes
            exempt += result.exempt
            if not result.ok:
                failures.append(result)
                print(f"FAIL seed {result.seed} {_mode(result.with_igen)} after {done} runs: {result.message}")
                break
    finally:
        if pool is not None:
            pool.terminate()
    elapsed = time.monotonic() - start
    names = ", ".join(_mode(m) for m in modes)
    print(f"schedules run: {done} ({names}); time: {elapsed:.1f} s; failures: {len(failures)}")
    print(f"files written: {lifetimes}; let pass as a known gap (Rule 4 of agent.py): {exempt}")
    if failures:
        report(failures[0], args.steps, legacy, not args.no_shrink, known_gaps)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
