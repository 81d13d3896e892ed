"""A drain-only pipe's core (draining.py through PipeClient), against a real destination: what it
holds, where READY puts it, and the status file it ends with."""

from __future__ import annotations

from pathlib import Path

from tcppipe.checkpoint import load_history
from tcppipe.discovery import Discovery, Identify, Seen, claims_of, owes
from tcppipe.origin import read_identity
from tcppipe.pipe_client import PipeClient
from tests.unit.test_pipe_client import GRACE_S, World


def drain_only(world: World) -> PipeClient:
    """The drain-only pipe of the world's FILE, from its status file."""
    client = PipeClient(str(world.origin), GRACE_S, 15.0, history=load_history(str(world.status)), drain_only=True)
    client.start(world.now)
    return client


def test_a_drain_only_pipe_sends_the_rest_of_its_listed_generation_and_never_file(tmp_path: Path) -> None:
    """The listed generation, rotated away, is resumed where the destination stands (its lost tail
    and what was written since sent once); the new file at FILE is never opened."""
    world = World(tmp_path)
    world.write(b"first\n")
    world.connect()
    world.send()
    world.write(b"second\n")
    world.send(deliver=False)  # lost with the connection
    world.save_status()
    world.cut()
    world.rotate("app.log.1")
    world.write(b"another pipe's file\n")
    with open(world.origin.parent / "app.log.1", "ab") as f:
        f.write(b"third\n")
    world.client.close()
    world.client = drain_only(world)
    assert [gen.path for gen in world.client.tailer.gens] == [str(world.origin.parent / "app.log.1")]
    world.connect()
    for _ in range(3):
        world.send()
    assert world.landed() == b"first\nsecond\nthird\n"
    world.client.end_drained()
    snapshot = world.client.snapshot()
    assert snapshot is not None
    assert snapshot["drained"] is True
    assert snapshot["queue"] == []
    assert [f[1] for f in snapshot["finished"]] == [(world.origin.parent / "app.log.1").stat().st_ino]


def test_a_drain_only_pipe_lets_go_what_landed_before_the_recorded_generation(tmp_path: Path) -> None:
    """Two listed generations, the server's record on the second: the first (landed) is let go
    unsent, the second goes on from its offset."""
    world = World(tmp_path)
    world.write(b"one\n")
    world.connect()
    world.send()
    world.rotate("app.log.2")
    world.client.follow(world.now, hup=True)
    world.write(b"two\n")
    world.client.follow(world.now)
    world.save_status()  # lists both; the status file is not written again before the crash
    world.send()
    world.send()
    world.cut()
    world.rotate("app.log.1")
    with open(world.origin.parent / "app.log.1", "ab") as f:
        f.write(b"two, later\n")
    world.client.close()
    world.client = drain_only(world)
    assert len(world.client.tailer.gens) == 2
    world.connect()
    assert [gen.path for gen in world.client.tailer.gens] == [str(world.origin.parent / "app.log.1")]
    assert [f.ino for f in world.client.tailer.finished] == [(world.origin.parent / "app.log.2").stat().st_ino]
    for _ in range(3):
        world.send()
    assert world.landed() == b"one\ntwo\ntwo, later\n"


def test_a_drain_only_pipe_that_finds_nothing_says_drained_and_keeps_the_list(tmp_path: Path) -> None:
    """Its listed generation deleted: nothing is held, and the status it ends with owes nothing
    but still lists the entry (a later pipe of the path finds what came after by it)."""
    world = World(tmp_path)
    world.write(b"gone soon\n")
    world.save_status()
    world.client.close()
    world.origin.unlink()
    world.client = drain_only(world)
    assert world.client.tailer.gens == []
    world.client.end_drained()
    snapshot = world.client.snapshot()
    assert snapshot is not None
    assert snapshot["drained"] is True
    assert len(snapshot["queue"]) == 1


def test_a_generation_let_go_back_at_file_does_not_take_the_path_from_its_drain(tmp_path: Path) -> None:
    """FILE is a generation its path let go (put back by ``mv``) while a drain-only pipe holds one
    that never landed, and the server's record names the let-go one: the drain-only pipe is not
    handed over (an ordinary pipe would resume at FILE, the record's, and drop the listed one
    unsent); it sends its generation, then FILE goes as any new inode at FILE does."""
    world = World(tmp_path)
    file, one, two = str(world.origin), world.origin.parent / "app.log.1", world.origin.parent / "app.log.2"
    world.write(b"one\n")
    world.connect()
    world.send()
    world.client.end_drained()  # its path went away for the grace period: ended, everything let go
    world.save_status()
    world.client.close()
    world.cut()
    world.rotate("app.log.1")  # the old one was renamed away; a new FILE, written ...
    world.write(b"two\n")
    world.client = world.new_client()
    world.save_status()  # ... and listed by the next pipe, killed before its first READY
    world.client.close()
    world.origin.rename(two)  # while the agent is down: FILE renamed away, none made yet

    discovery = Discovery(GRACE_S)
    history = load_history(str(world.status))
    for inode, claim in claims_of(file, history):
        discovery.claim(inode, claim)
    assert owes(history, drained=False)
    discovery.left_undrained(file)
    found = {str(p): _seen(p) for p in (one, two)}
    assert discovery.decide(found, {}, world.now, _identify(found)).drain == (file,)
    world.client = drain_only(world)
    assert [gen.path for gen in world.client.tailer.gens] == [str(two)]

    one.rename(world.origin)  # the let-go generation put back at FILE
    found = {str(p): _seen(p) for p in (world.origin, two)}
    running = {file: world.client.open_inodes()}
    discovery.decide(found, running, world.now, _identify(found))
    if discovery.hands_over(file, found[file], _identify(found)):
        world.save_status()  # stopped unfinished: its status file still lists what it holds
        world.client.close()
    else:
        world.connect()
        world.send()
        world.client.end_drained()
        world.save_status()
        world.client.close()
        world.cut()
    world.client = world.new_client()  # the ordinary pipe of the path, FILE the let-go generation
    world.connect()
    for _ in range(3):
        world.send()
    # Nothing listed is lost; FILE, an inode put back at FILE, goes from its first byte as any
    # pipe sends one (a single-file pipe too): its bytes land again after "two".
    assert world.landed() == b"one\ntwo\none\n"


def _seen(path: Path) -> Seen:
    st = path.stat()
    return Seen((st.st_dev, st.st_ino), st.st_size, st.st_mtime_ns)


def _identify(found: dict[str, Seen]) -> Identify:
    return lambda path, length: read_identity(path, length, found[path].inode)
