"""One tcppipe for many files: several -f, globs, new files, rotated names, kill -9, -I and status."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

from tests.integration.conftest import Pipes, command, kill9, same_bytes, stop, wait_until
from tests.integration.test_restart import Writer, numbered_lines


def start_agent(pipes: Pipes, *files: Path | str, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """tcppipe with one -f per argument (a glob stays unexpanded: no shell), in the foreground."""
    first, *rest = files
    more = [arg for f in rest for arg in ("-f", str(f))]
    return pipes.spawn(pipes.client_args(Path(first), *more, *extra))


def exact(pairs: list[tuple[Path, Path]]) -> bool:
    return all(same_bytes(origin, dest) for origin, dest in pairs)


def test_a_glob_and_a_plain_file_stream_byte_exact(pipes: Pipes) -> None:
    """-f GLOB -f FILE: every matching file and the plain one are their own pipes, byte-exact, appends too."""
    a, dest_a = pipes.pipe("a.log")
    b, dest_b = pipes.pipe("b.log")
    plain, dest_plain = pipes.pipe("syslog")  # beside them, but not matched by *.log
    for i, origin in enumerate((a, b, plain)):
        origin.write_bytes(numbered_lines(i * 1000, 500 + i * 300))
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "*.log", plain)
    pairs = [(a, dest_a), (b, dest_b), (plain, dest_plain)]
    wait_until(lambda: exact(pairs), what="three files copied")
    for i, origin in enumerate((a, b, plain)):
        with open(origin, "ab") as f:
            f.write(numbered_lines(10_000 + i * 100, 50) + b"no newline yet")
    wait_until(lambda: exact(pairs), what="appends to all three")
    assert stop(agent) == 0


def test_a_new_matching_file_arrives_from_its_first_byte(pipes: Pipes) -> None:
    """A file created after the start that the glob matches gets its own pipe within -t, from byte 0."""
    a, dest_a = pipes.pipe("a.log")
    a.write_bytes(numbered_lines(0, 100))
    new, dest_new = pipes.pipe("new.log")
    new.unlink()  # defined on the server, not there yet on the origin
    pipes.start_server()
    start_agent(pipes, pipes.tmp / "origin" / "*.log", extra=("-t", "0.2"))
    wait_until(lambda: same_bytes(a, dest_a), what="first file copied")
    content = numbered_lines(500, 300)
    new.write_bytes(content)
    wait_until(lambda: same_bytes(new, dest_new), what="the new file, whole")
    assert dest_new.read_bytes() == content
    with open(new, "ab") as f:
        f.write(b"and an append\n")
    wait_until(lambda: same_bytes(new, dest_new), what="an append to the new file")


def test_a_rotated_name_the_glob_matches_is_not_sent_again(pipes: Pipes) -> None:
    """Glob *.log*: after mv a.log a.log.1 and a new a.log, a.log.1 is a.log's old generation, not a new pipe."""
    a, dest_a = pipes.pipe("a.log")
    rotated = a.with_name("a.log.1")
    dest_rotated = pipes.tmp / "dest" / "a.log.1"
    pipes.define(f"127.0.0.1:{rotated} | {dest_rotated}")  # a pipe for it would be accepted: it must not happen
    a.write_bytes(numbered_lines(0, 400))
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "*.log*", extra=("-t", "0.2", "--rotate-grace", "600"))
    wait_until(lambda: same_bytes(a, dest_a), what="first copy")
    a.rename(rotated)
    a.write_bytes(b"")
    pipes.syslog.wait_for(f"{rotated} is a rotated generation of {a}")
    with open(rotated, "ab") as f:
        f.write(numbered_lines(400, 50))  # a writer that has not reopened yet
    with open(a, "ab") as f:
        f.write(numbered_lines(1000, 70))
    agent.send_signal(signal.SIGHUP)
    wait_until(lambda: dest_a.read_bytes() == rotated.read_bytes() + a.read_bytes(), what="a.log.1 then a.log")
    assert not dest_rotated.exists()
    assert stop(agent) == 0
    assert not dest_rotated.exists()


def test_files_already_rotated_at_start_keep_to_their_own_generation_at_the_next_rotation(pipes: Pipes) -> None:
    """a.log and a.log.1 both match at the first start: at the next rotation a.log.1's pipe does not take
    a.log's old file (now named a.log.1) and ends; a.log.2 is no pipe; each inode lands once."""
    a, dest_a = pipes.pipe("a.log")
    one, dest_one = pipes.pipe("a.log.1")
    two = a.with_name("a.log.2")
    dest_two = pipes.tmp / "dest" / "a.log.2"
    pipes.define(f"127.0.0.1:{two} | {dest_two}")
    a.write_bytes(numbered_lines(0, 300))
    one.write_bytes(numbered_lines(5000, 200))
    old_one = one.read_bytes()
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "a.log*", extra=("-t", "0.2", "--rotate-grace", "600"))
    wait_until(lambda: same_bytes(a, dest_a) and same_bytes(one, dest_one), what="first copies")
    old_a = a.read_bytes()
    one.rename(two)
    a.rename(one)
    a.write_bytes(numbered_lines(9000, 40))
    agent.send_signal(signal.SIGHUP)
    pipes.syslog.wait_for("this pipe ends once what it holds has landed")
    wait_until(lambda: dest_a.read_bytes() == old_a + a.read_bytes(), what="a.log: its old generation, then the new")
    wait_until(lambda: pipes.client_pid(one) is None, what="the pipe of a.log.1 to end")
    assert dest_one.read_bytes() == old_one
    assert not dest_two.exists()
    assert pipes.client_pid(a) == agent.pid
    assert stop(agent) == 0


def test_kill9_of_the_glob_client_while_ten_files_stream_then_restart(pipes: Pipes) -> None:
    """kill -9 of one tcppipe carrying 10 files while writers append to all; restarted, every destination is exact."""
    pairs = [pipes.pipe(f"f{i}.log") for i in range(10)]
    for i, (origin, _dest) in enumerate(pairs):
        origin.write_bytes(numbered_lines(0, 200 + 50 * i))
    pipes.start_server()
    pattern = pipes.tmp / "origin" / "f*.log"
    agent = start_agent(pipes, pattern)
    writers = [Writer(origin, lines_per_tick=5, tick_s=0.01) for origin, _ in pairs]
    for writer in writers:
        writer.start()
    try:
        wait_until(lambda: all(w.written > 100 for w in writers), what="writers under way")
        wait_until(lambda: all(dest.exists() and dest.stat().st_size > 0 for _, dest in pairs), what="all streaming")
        kill9(agent)
        wait_until(lambda: all(w.written > 300 for w in writers), what="appends while tcppipe is dead")
        start_agent(pipes, pattern)
        wait_until(lambda: all(w.written > 500 for w in writers), what="appends after the restart")
    finally:
        for writer in writers:
            writer.finish()
    wait_until(lambda: exact(pairs), what="every destination exact")


def test_dash_I_and_status_name_the_glob_client_for_each_file(pipes: Pipes) -> None:
    """tcppipe -I -f FILE prints the glob client's pid for a file it matched; status lists every pipe."""
    pairs = [pipes.pipe(name) for name in ("x.log", "y.log", "z.log")]
    other, _ = pipes.pipe("other.txt")
    for origin, _dest in pairs:
        origin.write_bytes(b"hello\n")
    pipes.start_server()
    pattern = pipes.tmp / "origin" / "*.log"
    agent = start_agent(pipes, pattern)
    wait_until(lambda: exact(pairs), what="copies")
    for origin, _dest in pairs:
        assert pipes.client_pid(origin) == agent.pid
    assert pipes.client_pid(other) is None
    assert pipes.client_pid(pattern) == agent.pid  # -I with the same glob names the process too
    out = pipes.run([command("tcppipe"), "status", "--state-dir", str(pipes.client_state), "--json"])
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["pipes"]
    assert sorted(row["origin"] for row in rows) == sorted(str(o) for o, _ in pairs)
    assert all(row["state"] == "streaming" for row in rows)
    second = pipes.run(pipes.client_args(pattern))
    assert second.returncode == 6, second.stderr
    assert stop(agent) == 0
    assert all(pipes.client_pid(origin) is None for origin, _ in pairs)


def test_one_sighup_makes_every_pipe_follow_its_rotation(pipes: Pipes) -> None:
    """Two files rotated by rename, one SIGHUP to the process: each destination is its old file then its new one."""
    pairs = [pipes.pipe(name) for name in ("p.log", "q.log")]
    for origin, _dest in pairs:
        origin.write_bytes(numbered_lines(0, 200))
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "*.log", extra=("--rotate-grace", "600"))
    wait_until(lambda: exact(pairs), what="first copies")
    olds = []
    for origin, _dest in pairs:
        old = origin.with_name(origin.name + ".1")  # not matched by *.log
        origin.rename(old)
        with open(old, "ab") as f:
            f.write(numbered_lines(200, 30))  # the writer had not reopened yet
        origin.write_bytes(numbered_lines(900, 20))
        olds.append(old)
    agent.send_signal(signal.SIGHUP)

    def followed() -> bool:
        return all(d.read_bytes() == r.read_bytes() + o.read_bytes() for (o, d), r in zip(pairs, olds, strict=True))

    wait_until(followed, what="each destination: its old file, then its new one")
    assert stop(agent) == 0


def test_a_refused_file_does_not_stop_the_others_and_a_sighup_retries_it(pipes: Pipes) -> None:
    """A matching file the server refuses is logged and left; the others stream; defined later, a HUP sends it."""
    good, dest_good = pipes.pipe("good.log")
    late = pipes.tmp / "origin" / "late.log"
    dest_late = pipes.tmp / "dest" / "late.log"
    good.write_bytes(b"defined\n")
    late.write_bytes(b"not defined yet\n")
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "*.log")
    wait_until(lambda: same_bytes(good, dest_good), what="the defined file")
    pipes.syslog.wait_for("trying it again in 30 s")
    assert pipes.client_pid(late) is None
    with open(good, "ab") as f:
        f.write(b"still streaming\n")
    wait_until(lambda: same_bytes(good, dest_good), what="the defined file goes on")
    pipes.define(f"127.0.0.1:{late} | {dest_late}")  # new entries apply to new connections
    agent.send_signal(signal.SIGHUP)
    wait_until(lambda: same_bytes(late, dest_late), what="the file defined later, after a HUP")
    assert agent.poll() is None


def test_every_file_refused_at_start_ends_with_the_refusal_status(pipes: Pipes) -> None:
    """When every file found at start is refused, tcppipe exits 3, as the one-file form does."""
    for name in ("u.log", "v.log"):
        (pipes.tmp / "origin").mkdir(exist_ok=True)
        (pipes.tmp / "origin" / name).write_bytes(b"nobody wants this\n")
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "*.log")
    assert agent.wait(timeout=20) == 3
    assert "refused" in pipes.stderr_of(agent)


def test_a_deleted_file_is_finished_and_its_pipe_dropped(pipes: Pipes) -> None:
    """A file that is gone for the grace period, everything sent, ends its pipe; the others go on."""
    (keep, dest_keep), (doomed, dest_doomed) = pipes.pipe("keep.log"), pipes.pipe("doomed.log")
    keep.write_bytes(b"stays\n")
    doomed.write_bytes(numbered_lines(0, 100))
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "*.log", extra=("-t", "0.2", "--rotate-grace", "0.5"))
    wait_until(lambda: same_bytes(keep, dest_keep) and same_bytes(doomed, dest_doomed), what="copies")
    content = doomed.read_bytes()
    doomed.unlink()
    pipes.syslog.wait_for("and everything sent: pipe ended")
    wait_until(lambda: pipes.client_pid(doomed) is None, what="its lock released")
    assert dest_doomed.read_bytes() == content
    assert pipes.client_pid(keep) == agent.pid
    doomed.write_bytes(b"a new file by the old name\n")
    wait_until(lambda: dest_doomed.read_bytes() == content + doomed.read_bytes(), what="the new file, a new pipe")


def test_keep_tcppipe_alive_starts_one_agent_for_a_glob(pipes: Pipes) -> None:
    """keep_tcppipe_alive with a glob starts one detached tcppipe for it, and none while it runs."""
    pairs = [pipes.pipe(name) for name in ("k1.log", "k2.log")]
    for origin, _dest in pairs:
        origin.write_bytes(b"kept alive\n")
    pipes.start_server()
    pipes.client_state.mkdir(exist_ok=True)
    (pipes.client_state / "tcppipe.keepalive").touch()
    pattern = str(pipes.tmp / "origin" / "k*.log")
    args = [
        command("keep_tcppipe_alive"), "-f", pattern, "-h", "127.0.0.1", "-p", str(pipes.port),
        "--state-dir", str(pipes.client_state), "--syslog-address", str(pipes.syslog.path),
    ]  # fmt: skip
    assert pipes.run(args).returncode == 0
    pid = pipes.client_pid(Path(pattern))
    assert pid is not None
    pipes.adopt(pid)
    wait_until(lambda: exact(pairs), what="both files")
    assert all(pipes.client_pid(origin) == pid for origin, _ in pairs)
    assert pipes.run(args).returncode == 0
    assert pipes.client_pid(Path(pattern)) == pid


def test_a_glob_that_matches_nothing_yet_detaches_and_waits_for_its_first_file(pipes: Pipes) -> None:
    """Without --foreground and nothing matching, tcppipe detaches (exit 0) and sends the first file that appears."""
    (pipes.tmp / "origin").mkdir()
    first, dest = pipes.pipe("first.log")
    first.unlink()
    pipes.start_server()
    pattern = pipes.tmp / "origin" / "*.log"
    started = pipes.run(pipes.client_args(pattern, foreground=False))
    assert started.returncode == 0, started.stderr
    pid = pipes.client_pid(pattern)
    assert pid is not None
    pipes.adopt(pid)
    first.write_bytes(numbered_lines(0, 50))
    wait_until(lambda: same_bytes(first, dest), what="the first file to appear")
    assert pipes.client_pid(first) == pid


def inotify_instances(pid: int) -> int:
    """How many inotify instances process ``pid`` holds (its ``anon_inode:inotify`` fds)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return count


MANY_FILES = 300  # more than Linux's default 128 inotify instances per user
LATE_FILES = 50  # made after the start: found through the scan's directory watch, on the same instance
EVENT_WAIT_S = 5.0  # well under -t 30: only an inotify event brings a change this soon


def test_three_hundred_files_get_inotify_events_from_one_instance(pipes: Pipes) -> None:
    """One tcppipe following 300 files by one glob uses one inotify instance for them: with -t 30 new
    files, an append and a rotation (mv, recreate, no SIGHUP) arrive within 5 s, and nothing says it polls."""
    pairs = [pipes.pipe(f"f{i:03}.log") for i in range(MANY_FILES)]
    early, late = pairs[:-LATE_FILES], pairs[-LATE_FILES:]
    for origin, _dest in late:
        origin.unlink()  # defined on the server, made later
    for i, (origin, _dest) in enumerate(early):
        origin.write_bytes(b"file %d\n" % i)
    pipes.start_server()
    agent = start_agent(pipes, pipes.tmp / "origin" / "f*.log", extra=("-t", "30", "--rotate-grace", "0.5"))
    wait_until(lambda: exact(early), what=f"the first {len(early)} copies")
    for i, (origin, _dest) in enumerate(late, len(early)):
        origin.write_bytes(b"file %d\n" % i)
    wait_until(lambda: exact(late), timeout=EVENT_WAIT_S, what=f"{LATE_FILES} files made after the start")
    assert all(pipes.client_pid(origin) == agent.pid for origin, _ in pairs[::50])
    instances = inotify_instances(agent.pid)
    assert instances == 1  # the pipes' and the scan's, shared
    origin, dest = pairs[-1]  # started last: past the 128th pipe, it had no inotify instance of its own
    with open(origin, "ab") as f:
        f.write(b"an append\n")
    wait_until(lambda: same_bytes(origin, dest), timeout=EVENT_WAIT_S, what="the append, by inotify")
    origin, dest = pairs[-2]
    old_content = origin.read_bytes()
    origin.rename(origin.with_name(origin.name + ".1"))  # f298.log.1: not matched by f*.log
    origin.write_bytes(b"the new generation\n")
    wait_until(
        lambda: dest.read_bytes() == old_content + b"the new generation\n",
        timeout=EVENT_WAIT_S,
        what="the rotated file, then its new generation, without a SIGHUP",
    )
    assert inotify_instances(agent.pid) == instances
    assert stop(agent) == 0
    said = "\n".join(pipes.syslog.drain()) + pipes.stderr_of(agent)
    assert "polling every -t" not in said
    assert "no file-change events" not in said
