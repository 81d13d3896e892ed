"""The client core against a real destination, no sockets: the resume rule and rotation in every network state."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tcppipe.checkpoint import load_history
from tcppipe.destination import Destination
from tcppipe.pipe_client import PipeClient
from tcppipe.protocol import Data, Generation, NeedData
from tcppipe.session import ServerSession, admit_generation

GRACE_S = 5.0


class World:
    """One origin FILE, one destination, and a connection whose bytes in flight can be lost."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.origin = tmp / "origin" / "app.log"
        self.origin.parent.mkdir()
        self.origin.write_bytes(b"")
        self.dest_path = tmp / "dest" / "app.log"
        self.state = tmp / "state"
        self.status = tmp / "status.json"
        self.now = 0.0
        self.client = self.new_client()
        self.server: ServerSession | None = None
        self.dest: Destination | None = None
        self.in_flight = b""

    def new_client(self) -> PipeClient:
        client = PipeClient(str(self.origin), GRACE_S, 15.0, history=load_history(str(self.status)))
        client.start(self.now)
        return client

    def write(self, data: bytes) -> None:
        with open(self.origin, "ab") as f:
            f.write(data)

    def rotate(self, name: str) -> None:
        self.origin.rename(self.origin.parent / name)
        self.origin.write_bytes(b"")

    def connect(self) -> None:
        self.server = ServerSession(self.now, (), 15.0)
        self.in_flight = self.client.connect(self.now)
        self.deliver()
        self.dest = Destination.open(str(self.dest_path), str(self.state))
        record, offset = self.dest.answer()
        self.client.receive(self.server.ready(record, offset, self.now), self.now)

    def send(self, deliver: bool = True) -> None:
        """One round of the client's send loop; the bytes reach the server only if ``deliver``."""
        self.in_flight += b"".join(self.client.outgoing(self.now))
        if deliver:
            self.deliver()

    def deliver(self) -> None:
        server = self.server
        assert server is not None
        if self.in_flight:
            server.receive(self.in_flight, self.now)
        self.in_flight = b""
        for _ in range(10_000):
            event = server.next_event()
            if event is None or isinstance(event, NeedData):
                break
            assert self.dest is not None or not isinstance(event, Generation | Data)
            if isinstance(event, Generation):
                assert self.dest is not None
                refusal = admit_generation(self.dest.record, self.dest.landed(), event.ident, event.start)
                assert refusal is None, refusal
                self.dest.begin_generation(event.ident, event.start)
            elif isinstance(event, Data):
                assert self.dest is not None
                self.dest.write(event.payload)
        ack = b"" if self.dest is None else server.ack(self.dest.landed() or 0, self.now)
        if ack:
            self.client.receive(ack, self.now)

    def cut(self) -> None:
        """The connection dies with every byte in flight lost."""
        self.in_flight = b""
        self.client.disconnect()
        if self.dest is not None:
            self.dest.close()
        self.server = self.dest = None

    def save_status(self) -> None:
        from tcppipe.state import write_json_atomically

        snapshot = self.client.snapshot()
        assert snapshot is not None
        write_json_atomically(str(self.status), snapshot)

    def landed(self) -> bytes:
        return self.dest_path.read_bytes() if self.dest_path.exists() else b""


def test_a_queued_generation_resumes_from_byte_0_after_a_reset(tmp_path: Path) -> None:
    """Issue 10 #2: bytes of the new generation lost in flight are resent from its first byte."""
    world = World(tmp_path)
    world.write(b"old generation\n")
    world.connect()
    world.send()
    world.rotate("app.log.1")
    world.client.follow(world.now, hup=True)
    world.write(b"new generation, first line\n")
    world.send(deliver=False)  # GENERATION(new, 0) and its DATA are lost with the connection
    world.cut()
    world.write(b"new generation, second line\n")
    world.connect()  # READY names the old generation, fully landed
    world.send()
    assert world.landed() == b"old generation\nnew generation, first line\nnew generation, second line\n"


def test_rotations_while_connecting_are_all_followed(tmp_path: Path) -> None:
    """Issue 10 #1: two rotations while no connection stands lose no generation."""
    world = World(tmp_path)
    world.write(b"one\n")
    world.connect()
    world.send()
    world.cut()
    world.rotate("app.log.2")
    world.client.follow(world.now, hup=True)
    world.write(b"two\n")
    world.client.follow(world.now)
    world.rotate("app.log.1")
    world.client.follow(world.now, hup=True)
    world.write(b"three\n")
    world.connect()
    for _ in range(5):
        world.send()
    assert world.landed() == b"one\ntwo\nthree\n"


def test_many_quick_rotations_cost_one_grace_period(tmp_path: Path) -> None:
    """Issue 10 #5: ten rotations without a signal are all sent once one grace period has passed."""
    world = World(tmp_path)
    world.connect()
    expected = b""
    for n in range(10):
        line = b"generation %d\n" % n
        world.write(line)
        expected += line
        world.now += 0.1
        world.client.follow(world.now)
        world.rotate(f"app.log.{n}")
        world.client.follow(world.now)
    world.now += GRACE_S + 0.5
    for _ in range(30):
        world.send()
    assert world.landed() == expected


def test_a_restart_sends_every_later_generation_when_the_recorded_one_is_gone(tmp_path: Path) -> None:
    """Issue 10 #6: the recorded generation was deleted while tcppipe was down; the later ones still go, in order."""
    world = World(tmp_path)
    world.write(b"first\n")
    world.connect()
    world.send()
    world.rotate("app.log.2")
    world.client.follow(world.now)
    world.write(b"second\n")
    world.rotate("app.log.1")
    world.client.follow(world.now)
    world.write(b"third\n")
    world.save_status()
    world.cut()
    world.client.close()  # kill -9: nothing of the second and third generation was sent
    os.unlink(world.origin.parent / "app.log.2")  # the recorded generation is gone
    world.client = world.new_client()
    world.connect()
    world.now += GRACE_S + 1
    for _ in range(5):
        world.send()
    assert world.landed() == b"first\nsecond\nthird\n"
    assert any("is gone" in n for n in world.client.take_notices())


def test_a_restarted_pipe_holds_open_only_what_it_opened_not_what_its_status_file_lists(tmp_path: Path) -> None:
    """Before READY the status file still lists the last run's generations (shape), but only the
    open ones are held: a listed inode may be freed and its number reused by another pipe's file."""
    world = World(tmp_path)
    world.write(b"first\n")
    world.rotate("app.log.1")
    world.client.follow(world.now)
    world.save_status()
    listed = world.client.shape()
    world.client.close()
    os.unlink(world.origin.parent / "app.log.1")  # freed while down; its number may be reused
    world.client = world.new_client()
    assert len(listed) == 2
    assert world.client.shape() == listed  # still listed until READY
    assert world.client.open_inodes() == listed[1:]  # FILE only


def test_reading_into_a_reused_buffer_lands_the_same_bytes(tmp_path: Path) -> None:
    """``outgoing_into`` (the catch-up path: payloads are views of one buffer, reused each
    round) lands what ``outgoing`` does, checksums checked, across a rotation and full batches."""
    from tcppipe.pipe_client import BATCH_BYTES

    body = b"".join(b"%07d %s\n" % (i, b"x" * (i % 90)) for i in range(120_000))  # about 6.5 MB
    for name, reuse in (("copies", False), ("views", True)):
        (tmp_path / name).mkdir()
        world = World(tmp_path / name)
        world.write(body[: len(body) // 2])
        world.connect()
        buffer = bytearray(BATCH_BYTES) if reuse else None
        views = 0
        for step in range(8):
            if step == 2:
                world.rotate("app.log.1")
                world.write(body[len(body) // 2 :])
                world.client.follow(world.now, hup=True)
            frames = world.client.outgoing_into(world.now, buffer)
            views += sum(isinstance(frame, memoryview) for frame in frames)
            # Consumed before the next round reads into the buffer again, as the adapter does.
            world.in_flight = b"".join(frames)
            world.deliver()
            world.now += 0.01
        assert world.landed() == body
        assert (views > 0) == reuse


def test_the_directories_rotation_was_seen_to_use_survive_a_restart_and_damage_is_dropped(tmp_path: Path) -> None:
    """The status file's ``rotated_into`` (logrotate's olddir, seen once) is read back; a
    relative path, a non-string or a path with NUL is no directory to look in."""
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"rotated_into": ["/var/log/old", "relative", 7, "/a\u0000b", "/srv/archive"]}))
    assert load_history(str(status)).rotated_into == ("/var/log/old", "/srv/archive")
    status.write_text(json.dumps({"rotated_into": "/var/log/old"}))
    assert load_history(str(status)).rotated_into == ()
