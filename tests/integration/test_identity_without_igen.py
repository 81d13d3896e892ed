"""A file system without inode generation numbers: a later file in a freed inode number is
told from the generation that had it by its birth time (an overlayfs mount, as in a container)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcppipe.origin import BIRTH_TIME_BASE, birth_time_ns, file_identity_number, inode_generation
from tests.integration.conftest import Pipes, kill9, same_bytes, sha256, wait_until
from tests.integration.test_many_files import start_agent
from tests.unit.test_origin_identity import number_of

# Files created looking for the freed inode number: ext4 hands it out again at once.
MAX_TRIES_FOR_THE_INODE = 2000


@pytest.fixture
def overlay_dir(tmp_path: Path) -> Iterator[Path]:
    """An overlayfs mount (its upper layer under pytest's temporary directory), unmounted after
    (asked for before ``pipes``, so that its processes are gone by then)."""
    if os.geteuid() != 0:
        pytest.skip("mounting an overlayfs needs root")
    layers = tmp_path / "layers"
    for name in ("lower", "upper", "work", "merged"):
        (layers / name).mkdir(parents=True)
    options = f"lowerdir={layers / 'lower'},upperdir={layers / 'upper'},workdir={layers / 'work'}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "tcppipe-test", "-o", options, str(layers / "merged")],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount an overlayfs here: {mounted.stderr.strip()}")
    try:
        yield layers / "merged"
    finally:
        subprocess.run(["umount", str(layers / "merged")], check=True)


def reuse_inode(directory: Path, ino: int) -> Path:
    """A new file in ``directory`` that has inode number ``ino`` (freed just before)."""
    tries: list[Path] = []
    try:
        for i in range(MAX_TRIES_FOR_THE_INODE):
            candidate = directory / f"candidate{i}"
            candidate.touch()
            if candidate.stat().st_ino == ino:
                return candidate
            tries.append(candidate)
        pytest.skip(f"inode number {ino} was not handed out again in {MAX_TRIES_FOR_THE_INODE} new files")
    finally:
        for path in tries:
            path.unlink()


@pytest.mark.parametrize("first", [b"a", b""], ids=["one-byte-head", "empty"])
def test_a_later_file_in_a_reused_inode_number_is_neither_skipped_nor_taken_for_the_old(
    overlay_dir: Path, pipes: Pipes, first: bytes
) -> None:
    """On overlayfs (no inode generation numbers) app.log is sent while its head is one byte or
    none, tcppipe is killed -9, app.log is deleted and a new app.log gets its inode number and
    starts with the same byte: the restarted tcppipe sends all of the new file after the old
    (before, the server's record of the old one, inode and one-byte head, matched the new file,
    and its first byte was skipped)."""
    origin, dest = overlay_dir / "app.log", pipes.tmp / "dest" / "app.log"
    origin.write_bytes(first)
    with open(origin, "rb") as f:
        assert inode_generation(f.fileno()) is None, "this overlayfs has inode generation numbers"
    pipes.define(f"127.0.0.1:{origin} | {dest}")
    pipes.start_server()
    client = pipes.start_client(origin)
    pipes.syslog.wait_for("READY: sending")
    wait_until(lambda: dest.exists() and dest.read_bytes() == first, what="the first generation")
    kill9(client)
    ino = origin.stat().st_ino
    origin.unlink()
    later = reuse_inode(overlay_dir, ino)
    second = b"a second file\n"
    later.write_bytes(second)
    later.rename(origin)
    assert origin.stat().st_ino == ino
    client = pipes.start_client(origin)
    wait_until(lambda: dest.read_bytes().endswith(b"second file\n"), what="the second file's last line")
    expected = pipes.tmp / "expected"
    expected.write_bytes(first + second)
    assert sha256(dest) == sha256(expected), dest.read_bytes()
    kill9(client)


def test_an_overlayfs_file_created_in_the_upper_layer_has_its_birth_time(overlay_dir: Path) -> None:
    """A file created on the overlay (in its upper layer) is numbered by its birth time, the same after a rename."""
    path = overlay_dir / "app.log"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        born = birth_time_ns(f.fileno())
    assert born is not None
    assert number_of(path) == BIRTH_TIME_BASE + born
    path.rename(overlay_dir / "app.log.1")
    assert number_of(overlay_dir / "app.log.1") == BIRTH_TIME_BASE + born


def test_an_overlayfs_file_from_the_lower_layer_has_no_number_before_or_after_its_copy_up(overlay_dir: Path) -> None:
    """A file of the lower layer (an image's /var/log/dpkg.log) has none: copying it up at its first
    write gives it the upper file's birth time while its inode number stays, and a number that
    changed would make the file another generation of itself (sent again)."""
    (overlay_dir.parent / "lower" / "dpkg.log").write_bytes(b"from the image\n")
    path = overlay_dir / "dpkg.log"
    ino = path.stat().st_ino
    with open(path, "rb") as f:
        assert number_of(path) is None
        before = birth_time_ns(f.fileno())
        with open(path, "ab") as appending:
            appending.write(b"written in the container\n")
        assert path.stat().st_ino == ino
        assert birth_time_ns(f.fileno()) != before  # the copy-up's
        assert file_identity_number(f.fileno()) is None
    assert number_of(path) is None


def test_a_glob_takes_a_later_file_in_a_reused_inode_number_for_a_new_file(overlay_dir: Path, pipes: Pipes) -> None:
    """A glob pipe on overlayfs: a.log, holding one byte, is sent, tcppipe is killed -9, a.log is
    deleted and b.log gets its inode number, starting with the same byte: after the restart b.log
    is a new file sent whole to its own destination, and a.log's destination holds a.log once
    (before, b.log was taken for a.log's generation, and none of it was sent anywhere)."""
    a, dest_dir = overlay_dir / "a.log", pipes.tmp / "dest"
    a.write_bytes(b"a")
    pipes.define(f"127.0.0.1:{overlay_dir}/*.log | {dest_dir}/{{name}}")
    pipes.start_server()
    agent = start_agent(pipes, overlay_dir / "*.log")
    wait_until(lambda: (dest_dir / "a.log").exists() and (dest_dir / "a.log").read_bytes() == b"a", what="a.log")

    def recorded() -> bool:
        for path in pipes.client_state.glob("tcppipe.*.status"):
            raw = json.loads(path.read_text())
            if raw.get("file") == str(a) and raw.get("offset") == 1:
                return True
        return False

    wait_until(recorded, what="a.log's generation in its status file")
    kill9(agent)
    ino = a.stat().st_ino
    a.unlink()
    later = reuse_inode(overlay_dir, ino)
    later.write_bytes(b"a second file\n")
    b = overlay_dir / "b.log"
    later.rename(b)
    agent = start_agent(pipes, overlay_dir / "*.log")
    wait_until(
        lambda: (dest_dir / "b.log").exists() or (dest_dir / "a.log").stat().st_size > 1, what="b.log sent somewhere"
    )
    wait_until(lambda: (dest_dir / "b.log").exists() and same_bytes(b, dest_dir / "b.log"), what="b.log exact")
    assert (dest_dir / "a.log").read_bytes() == b"a"
    assert sha256(dest_dir / "b.log") == sha256(b)
    kill9(agent)
