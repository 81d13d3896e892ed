"""Schedules: a seed makes a list of actions; a run plays them on a fresh World and checks.

Rule 1: the actions are made up front from the seed (writes, origin rotations,
faults); the World's own randomness (latencies, chunk sizes) comes from the
same seed. A run is a pure function of (seed, options, the actions kept), so a
shrunk schedule is named by the indexes it keeps and replays exactly.

Rule 2: after the last fault has ended the network is healthy, both sides run,
nothing is written, and the world runs ``QUIET_S`` more simulated seconds; the
destination must then hold every byte it may not lose.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.sim.world import QUIET_S, Action, SimFailure, World

FAULT_KINDS = (
    ("rotate", 10),
    ("rotate_many", 5),
    ("fast_rotate", 5),
    ("copytruncate", 3),
    ("delete", 3),
    ("hup", 2),
    ("kill_client", 8),
    ("kill_server", 6),
    ("refuse", 4),
    ("blackhole", 6),
    ("cut", 10),
    ("stall", 5),
    ("dest_rotate", 5),
    ("takeover", 4),
    # Several numbered rotations with no file side run between (a loaded host, a stopped tcppipe).
    ("rotate_burst", 3),
)


def _hup(rng: random.Random) -> float | None:
    r = rng.random()
    if r < 0.35:
        return 0.0
    if r < 0.7:
        return round(rng.uniform(0.05, 4.0), 3)
    return None


def _write(rng: random.Random, t: float) -> Action:
    r = rng.random()
    size = rng.randint(10, 200) if r < 0.7 else rng.randint(200, 4000) if r < 0.96 else rng.randint(4000, 100_000)
    args: dict[str, Any] = {"size": size}
    if rng.random() < 0.2:
        args["split"] = round(rng.uniform(0.001, 1.0), 3)
    return Action(t, "write", args)


# How the world's rotation names generations (``World.naming``).
NAMINGS = ("numbered", "numbered olddir", "dateext", "dateext olddir")


def generate(seed: int, faults: int) -> tuple[list[Action], dict[str, Any]]:
    """The actions of schedule ``seed`` and its world options."""
    rng = random.Random(seed)
    opts: dict[str, Any] = {"backups": rng.randint(1, 5), "disk_origin": rng.random() < 0.25}
    # Drawn apart, so each seed's actions stay what they were before namings were added.
    opts["naming"] = random.Random(seed * 31 + 7).choice(NAMINGS)
    duration = 2.0 + faults * 1.2
    actions: list[Action] = []
    t = 0.0
    rate = rng.choice((2.0, 5.0, 15.0))
    while t < duration:
        t += rng.expovariate(rate)
        actions.append(_write(rng, t))
    kinds, weights = zip(*FAULT_KINDS, strict=True)
    chosen = rng.choices(kinds, weights, k=faults)
    for kind in chosen:
        t = rng.uniform(0.2, duration)
        if kind == "rotate":
            actions.append(Action(t, "rotate", {"hup": _hup(rng)}))
        elif kind == "rotate_many":
            for _ in range(rng.randint(2, 4)):
                actions.append(Action(t, "rotate", {"hup": _hup(rng)}))
                t += rng.uniform(0.05, 1.5)
        elif kind == "fast_rotate":
            # RotatingFileHandler: several rollovers a second, backups deleted, no SIGHUP.
            period = rng.uniform(0.05, 0.4)
            for _ in range(rng.randint(3, 15)):
                for _ in range(rng.randint(1, 4)):
                    actions.append(_write(rng, t))
                    t += period / 5
                actions.append(Action(t, "rotate", {"hup": None}))
                t += period / 5
        elif kind == "copytruncate":
            actions.append(Action(t, "copytruncate", {"hup": 0.0 if rng.random() < 0.5 else None}))
        elif kind == "delete":
            actions.append(Action(t, "delete", {"recreate": rng.random() < 0.5}))
        elif kind == "hup":
            actions.append(Action(t, "hup"))
        elif kind in ("kill_client", "kill_server"):
            restart = rng.uniform(0.05, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, 8.0)
            actions.append(Action(t, kind, {"restart": round(restart, 3)}))
        elif kind in ("refuse", "blackhole"):
            actions.append(Action(t, kind, {"duration": round(rng.uniform(0.3, 6.0), 3)}))
        elif kind == "stall":
            actions.append(Action(t, kind, {"duration": round(rng.uniform(0.2, 5.0), 3)}))
        elif kind == "cut":
            learns = [round(rng.uniform(0.0, 2.0), 3) if rng.random() < 0.6 else None for _ in range(2)]
            at = [rng.random() if rng.random() < 0.5 else 0.0 for _ in range(2)]
            actions.append(
                Action(
                    t,
                    "cut",
                    {
                        "at": round(at[0], 3),
                        "at_down": round(at[1], 3),
                        "client_learns": learns[0],
                        "server_learns": learns[1],
                    },
                )
            )
        elif kind == "dest_rotate":
            hup = round(rng.uniform(0.0, 2.0), 3) if rng.random() < 0.85 else None
            actions.append(Action(t, "dest_rotate", {"hup": hup}))
        elif kind == "takeover":
            actions.append(Action(t, "takeover", {"restart": round(rng.uniform(0.05, 1.0), 3)}))
        elif kind == "rotate_burst":
            actions.append(Action(t, "rotate_burst", {"count": rng.randint(2, 6), "size": rng.randint(10, 2000)}))
    # Millisecond times, distinct, so the file side (0.3 ms after each origin event) runs between them.
    actions.sort(key=lambda a: a.t)
    last = -1.0
    for a in actions:
        a.t = max(round(a.t, 3), round(last + 0.001, 3))
        last = a.t
    return actions, opts


def _ends_at(a: Action) -> float:
    extra = 0.0
    for key in ("duration", "restart", "hup", "split"):
        value = a.args.get(key)
        if isinstance(value, int | float):
            extra = max(extra, float(value))
    return a.t + extra


def apply(world: World, a: Action) -> None:
    kind, args = a.kind, a.args
    if kind == "write":
        world.write(args["size"], args.get("split"))
    elif kind == "rotate":
        world.rotate(args["hup"])
    elif kind == "rotate_burst":
        world.rotate_burst(args["count"], args["size"])
    elif kind == "copytruncate":
        world.copytruncate(args["hup"])
    elif kind == "delete":
        world.delete(args["recreate"])
    elif kind == "hup":
        world.client_hup()
    elif kind == "kill_client":
        world.kill_client(args["restart"])
    elif kind == "kill_server":
        world.kill_server(args["restart"])
    elif kind == "refuse":
        world.refuse_until = max(world.refuse_until, world.now + args["duration"])
    elif kind == "blackhole":
        world.blackhole(args["duration"])
    elif kind == "stall":
        world.stall_until = max(world.stall_until, world.now + args["duration"])
    elif kind == "cut":
        world.cut(args)
    elif kind == "dest_rotate":
        world.rotate_destination(args["hup"])
    elif kind == "takeover":
        # The old connection lingers half-open on the server; a restarted client connects again.
        world.cut({"at": 0.0, "at_down": 0.0, "client_learns": None, "server_learns": None})
        world.kill_client(args["restart"])
    else:  # pragma: no cover
        raise ValueError(kind)


@dataclass
class Result:
    seed: int
    ok: bool
    message: str = ""
    actions: list[Action] = field(default_factory=list)
    faults: int = 0
    trace: list[str] = field(default_factory=list)
    bytes_written: int = 0
    generations: int = 0


def run_actions(seed: int, actions: Sequence[Action], opts: dict[str, Any]) -> Result:
    """Play ``actions`` on a fresh world; the first broken invariant fails the run."""
    world = World(seed, opts)
    actions = list(actions)
    faults = sum(a.kind != "write" for a in actions)
    try:
        world.start_client()
        for a in actions:
            world.run_until(a.t)
            world.now = a.t
            apply(world, a)
            world.run_until(a.t)
        end = max([0.0, *(_ends_at(a) for a in actions)]) + 0.01
        world.run_until(end)
        # Quiescence: healthy network, both sides up, FILE there, nothing more written.
        world.refuse_until = world.blackhole_until = world.stall_until = 0.0
        world.start_server()
        if "app.log" not in world.names:
            world.rotate(None, create=True)
        world.start_client()
        world.run_until(end + QUIET_S)
        world.check_destination()
        world.check_journal()
        missing = world.checker.complete()
        if missing is not None:
            raise SimFailure(missing)
        if world.admission_refusals:
            raise SimFailure(f"the server refused a GENERATION: {world.admission_refusals[0]}")
        return Result(
            seed,
            True,
            actions=actions,
            faults=faults,
            bytes_written=sum(len(g.content) for g in world.gens),
            generations=len(world.gens),
        )
    except SimFailure as exc:
        return Result(seed, False, f"{exc} (at t={world.now:.3f})", actions, faults, list(world.trace))
    except Exception as exc:  # a core raised what it must not
        tb = traceback.format_exc(limit=6)
        return Result(seed, False, f"crash: {exc!r} (at t={world.now:.3f})\n{tb}", actions, faults, list(world.trace))
    finally:
        world.cleanup()


def run_schedule(
    seed: int, faults: int, keep: Sequence[int] | None = None, opts: dict[str, Any] | None = None
) -> Result:
    actions, world_opts = generate(seed, faults)
    world_opts.update(opts or {})
    if keep is not None:
        actions = [actions[i] for i in keep]
    return run_actions(seed, actions, world_opts)


def shrink(
    seed: int,
    faults: int,
    opts: dict[str, Any] | None = None,
    budget: int = 400,
    log: Callable[[str], None] | None = None,
) -> tuple[list[int], Result]:
    """Greedy: drop chunks of actions (halves down to single actions) while the run still fails."""
    actions, _ = generate(seed, faults)
    keep = list(range(len(actions)))
    result = run_schedule(seed, faults, keep, opts)
    assert not result.ok
    runs = 0
    chunk = max(1, len(keep) // 2)
    while chunk >= 1 and runs < budget:
        i = 0
        changed = False
        while i < len(keep) and runs < budget:
            trial = keep[:i] + keep[i + chunk :]
            runs += 1
            r = run_schedule(seed, faults, trial, opts)
            if not r.ok:
                keep, result, changed = trial, r, True
                if log is not None:
                    log(f"shrink: {len(keep)} actions")
            else:
                i += chunk
        if not changed:
            chunk //= 2
        else:
            chunk = min(chunk, max(1, len(keep) // 2))
    return keep, result
