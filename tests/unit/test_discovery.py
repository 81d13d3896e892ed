"""The host agent's pure decisions: which paths get a pipe, which are rotated names, which pipes are gone."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from tcppipe.discovery import (
    RETRY_MAX_S,
    Claim,
    Decision,
    Discovery,
    Inode,
    Seen,
    agent_lock_name,
    claims_of,
    is_pattern,
    let_go_claims,
    let_go_since,
    normalise_pattern,
    owes,
    watched_directories,
)
from tcppipe.origin import BIRTH_TIME_BASE
from tcppipe.protocol import GenerationId
from tcppipe.tailer import Finished, History, Recorded

GRACE_S = 5.0
A, B, C = (1, 10), (1, 11), (1, 12)


class Files:
    """A file system for the pure rules: each path's inode, size, mtime, identity number (an inode
    generation, or a birth time where there is none) and bytes."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[Inode, int | None, bytes, int]] = {}

    def put(self, path: str, inode: Inode, data: bytes = b"x", igen: int | None = None, mtime_ns: int = 1) -> None:
        self.files[path] = (inode, igen, data, mtime_ns)

    def move(self, old: str, new: str) -> None:
        self.files[new] = self.files.pop(old)

    def found(self) -> dict[str, Seen]:
        return {p: Seen(inode, len(data), mtime) for p, (inode, _i, data, mtime) in self.files.items()}

    def identify(self, path: str, length: int) -> tuple[int | None, bytes] | None:
        if path not in self.files:
            return None
        _inode, igen, data, _m = self.files[path]
        return igen, data[:length]

    def let_go(self, path: str, owner: str) -> tuple[Inode, Claim]:
        """What a pipe records of ``path``'s file when it lets it go."""
        inode, igen, data, mtime = self.files[path]
        head = data[:4096]
        ident = GenerationId(inode[0], inode[1], len(head), hashlib.sha256(head).hexdigest())
        return inode, Claim(owner, ident, igen, len(data), mtime)


def decide(d: Discovery, fs: Files, running: dict[str, list[Inode]], now: float) -> Decision:
    return d.decide(fs.found(), running, now, fs.identify)


def test_discovery_imports_no_io_layer() -> None:
    """discovery.py is pure: no asyncio, sockets or adapters."""
    tree = ast.parse((Path(__file__).resolve().parents[2] / "src" / "tcppipe" / "discovery.py").read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not names & {"asyncio", "socket", "os", "tcppipe.client", "tcppipe.host_agent"}


def test_every_new_match_gets_a_pipe_once() -> None:
    """Paths found and not running are started, sorted; running ones are not started again."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/b.log", B)
    fs.put("/l/a.log", A)
    assert decide(d, fs, {}, 0.0).start == ("/l/a.log", "/l/b.log")
    assert decide(d, fs, {"/l/a.log": [A], "/l/b.log": [B]}, 1.0).start == ()


def test_a_rotated_name_holding_a_running_pipes_inode_is_skipped() -> None:
    """a.log.1 with the inode a.log's pipe holds (draining) is that pipe's generation, never a pipe."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A)
    decide(d, fs, {}, 0.0)
    fs.move("/l/a.log", "/l/a.log.1")
    fs.put("/l/a.log", B)
    decision = decide(d, fs, {"/l/a.log": [A, B]}, 1.0)
    assert decision.start == ()
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}


def test_a_let_go_generation_is_still_its_pipes_while_the_file_is_the_same() -> None:
    """Once a.log's pipe has let go of its old generation, a.log.1 (and a.log.2) is still not a new pipe."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A, b"first\n")
    decide(d, fs, {"/l/a.log": [A]}, 0.0)
    fs.move("/l/a.log", "/l/a.log.1")
    fs.put("/l/a.log", B, b"second\n")
    d.claim(*fs.let_go("/l/a.log.1", "/l/a.log"))
    assert decide(d, fs, {"/l/a.log": [B]}, 1.0).rotated == {"/l/a.log.1": "/l/a.log"}
    fs.move("/l/a.log.1", "/l/a.log.2")
    assert decide(d, fs, {"/l/a.log": [B]}, 2.0).rotated == {"/l/a.log.2": "/l/a.log"}


def test_a_started_path_holds_its_inode_at_once() -> None:
    """The inode of a path that gets a pipe is held from that scan, before the pipe reports what it holds."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A)
    fs.put("/l/a.log.1", B)
    decide(d, fs, {}, 0.0)
    assert not d.admits("/l/a.log.1", Seen(A, 1, 1), fs.identify)
    assert not d.admits("/l/a.log", Seen(B, 1, 1), fs.identify)


def test_a_claim_ends_with_its_inode_so_a_reused_inode_is_a_new_pipe() -> None:
    """After the old generation is deleted, a new file that reuses its inode number gets a pipe."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A)
    fs.put("/l/a.log.1", C, b"old\n")
    decide(d, fs, {"/l/a.log": [A, C]}, 0.0)
    del fs.files["/l/a.log.1"]  # deleted, the pipe let go of it
    decide(d, fs, {"/l/a.log": [A]}, 1.0)
    fs.put("/l/new.log", C, b"new\n")
    assert decide(d, fs, {"/l/a.log": [A]}, 2.0).start == ("/l/new.log",)


def test_a_let_go_inode_reused_between_two_scans_is_a_new_pipe_without_inode_generations() -> None:
    """a.log.1, let go, is deleted and a new file b.log takes its inode number before the next
    scan (a file system with neither inode generation numbers nor birth times): b.log is not a
    rotated name of a.log."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A, b"a 1\n")
    fs.put("/l/a.log.1", C, b"a 0\n", mtime_ns=5)
    decide(d, fs, {"/l/a.log": [A, C]}, 0.0)
    d.claim(*fs.let_go("/l/a.log.1", "/l/a.log"))
    assert decide(d, fs, {"/l/a.log": [A]}, 1.0).rotated == {"/l/a.log.1": "/l/a.log"}
    del fs.files["/l/a.log.1"]
    fs.put("/l/b.log", C, b"b 0\n", mtime_ns=9)
    decision = decide(d, fs, {"/l/a.log": [A]}, 2.0)
    assert decision.start == ("/l/b.log",)
    assert decision.rotated == {}


def test_a_reused_inode_with_the_same_head_is_told_apart_by_its_inode_generation() -> None:
    """Where the file system has inode generation numbers, a later file that starts with the
    same bytes in a reused inode is still a new pipe."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log.1", C, b"same\n", igen=7, mtime_ns=5)
    d.claim(*fs.let_go("/l/a.log.1", "/l/a.log"))
    del fs.files["/l/a.log.1"]
    fs.put("/l/b.log", C, b"same\n more", igen=8, mtime_ns=9)
    assert decide(d, fs, {"/l/a.log": [A]}, 0.0).start == ("/l/b.log",)


def test_a_birth_time_tells_a_reused_inode_and_a_claim_from_before_birth_times_still_matches() -> None:
    """Without inode generations (tmpfs, overlayfs) the identity number is a birth time: a later
    file with the same head in a reused inode is a new pipe, and a claim an older version wrote
    there (no number) is still the file it names."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log.1", C, b"same\n", igen=BIRTH_TIME_BASE + 5, mtime_ns=5)
    d.claim(*fs.let_go("/l/a.log.1", "/l/a.log"))
    del fs.files["/l/a.log.1"]
    fs.put("/l/b.log", C, b"same\n more", igen=BIRTH_TIME_BASE + 9, mtime_ns=9)
    assert decide(d, fs, {"/l/a.log": [A]}, 0.0).start == ("/l/b.log",)
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log.1", C, b"old\n", mtime_ns=5)
    d.claim(*fs.let_go("/l/a.log.1", "/l/a.log"))  # igen None: written before birth times
    fs.put("/l/a.log.1", C, b"old\n", igen=BIRTH_TIME_BASE + 5, mtime_ns=5)
    assert decide(d, fs, {"/l/a.log": [A]}, 0.0).rotated == {"/l/a.log.1": "/l/a.log"}


def test_a_let_go_file_that_grew_stays_its_pipes_and_says_so() -> None:
    """A rotated name whose file grew after its pipe let it go (same head) is not sent again under
    its own name; the scan reports the growth once."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log.1", C, b"old line\n", mtime_ns=5)
    d.claim(*fs.let_go("/l/a.log.1", "/l/a.log"))
    fs.put("/l/a.log.1", C, b"old line\nlate line\n", mtime_ns=6)
    decision = decide(d, fs, {"/l/a.log": [A]}, 0.0)
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}
    assert decision.grew == {"/l/a.log.1": ("/l/a.log", 9)}
    again = decide(d, fs, {"/l/a.log": [A]}, 1.0)
    assert again.rotated == {"/l/a.log.1": "/l/a.log"}
    assert again.grew == {}


def test_a_file_let_go_empty_is_a_new_pipe_once_it_has_bytes() -> None:
    """Nothing of a generation let go while empty was sent: once it changes, it is sent under its name."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log.1", C, b"", mtime_ns=5)
    d.claim(*fs.let_go("/l/a.log.1", "/l/a.log"))
    assert decide(d, fs, {"/l/a.log": [A]}, 0.0).rotated == {"/l/a.log.1": "/l/a.log"}
    fs.put("/l/a.log.1", C, b"late\n", mtime_ns=6)
    assert decide(d, fs, {"/l/a.log": [A]}, 1.0).start == ("/l/a.log.1",)


def test_status_file_claims_hold_across_a_restart() -> None:
    """Generations the last run's status file listed for a.log are a.log's before its pipe runs again,
    while each file starts as it did; one whose head differs is a new pipe."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log.1", A, b"gen 1\n")
    fs.put("/l/a.log", B, b"gen 2\n")
    fs.put("/l/other.log", C, b"a later file\n")
    for path in ("/l/a.log.1", "/l/a.log"):
        inode, claim = fs.let_go(path, "/l/a.log")
        claim.let_go, claim.mtime_ns = False, None
        d.claim(inode, claim)
    inode, claim = fs.let_go("/l/other.log", "/l/a.log")
    claim.ident = GenerationId(1, 12, 6, hashlib.sha256(b"gen 0\n").hexdigest())
    claim.let_go, claim.mtime_ns = False, None
    d.claim(inode, claim)
    decision = decide(d, fs, {}, 0.0)
    assert decision.start == ("/l/a.log", "/l/other.log")
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}


def test_a_status_files_position_keeps_the_held_generations_inode_generation() -> None:
    """The position names the oldest held generation: its claim keeps that entry's inode generation,
    so a later file in the freed inode (another igen) is a new pipe, even when the held one was empty."""
    d, fs = Discovery(GRACE_S), Files()
    empty = GenerationId(1, 10, 0, hashlib.sha256(b"").hexdigest())
    history = History((empty, 0), (Recorded(empty, 0, 1),))
    for inode, claim in claims_of("/l/a.log", history):
        d.claim(inode, claim)
    assert d.claims[A][0].igen == 1
    fs.put("/l/c.log", A, b"a later file\n", igen=2, mtime_ns=7)
    assert decide(d, fs, {}, 0.0).start == ("/l/c.log",)


def test_only_generations_let_go_since_the_last_scan_are_claimed_again() -> None:
    """A pipe's let-go list is news only past the entry last claimed: claiming an older one again
    would replace a claim made since (its file became another path's pipe, which claims it)."""
    first, second, third = Finished(1, 10), Finished(1, 11), Finished(1, 12)
    assert let_go_since([first, second, third], first) == [second, third]
    assert let_go_since([first, second], second) == []
    assert let_go_since([first, second], None) == [first, second]
    assert let_go_since([second], first) == [second]  # trimmed past it: all are news
    d = Discovery(GRACE_S)
    empty = GenerationId(1, 10, 0, hashlib.sha256(b"").hexdigest())
    d.claim(A, Claim("/l/a.log", empty, None, 0, 1))  # a.log let it go empty
    d.claim(A, Claim("/l/a.log.2", GenerationId(1, 10, 1, hashlib.sha256(b"x").hexdigest()), None, 1, let_go=False))
    for inode, claim in let_go_claims("/l/a.log", let_go_since([first, second], first)):
        d.claim(inode, claim)
    assert d.claims[A][0].owner == "/l/a.log.2"


def test_two_status_files_claiming_one_inode_number_are_each_checked() -> None:
    """After a restart two status files may claim one inode number, each for another file (one
    freed, its number reused): the claim that names the file there decides, whichever came last."""
    d, fs = Discovery(GRACE_S), Files()
    empty = GenerationId(1, 10, 0, hashlib.sha256(b"").hexdigest())
    d.claim(A, Claim("/l/a.log", empty, 3, 0, let_go=False))
    d.claim(A, Claim("/l/c.log", empty, 2, 0, let_go=False))
    fs.put("/l/a.log.1", A, b"written later\n", igen=3)
    assert decide(d, fs, {"/l/a.log": []}, 0.0).rotated == {"/l/a.log.1": "/l/a.log"}
    assert [c.owner for c in d.claims[A]] == ["/l/a.log"]


def test_a_let_go_generation_whose_number_a_held_one_reused_claims_nothing() -> None:
    """A status file lists a generation let go empty and a held one in the same inode number (freed,
    then reused by a later FILE): the held one is the later file and stays its pipe's as it grows."""
    d, fs = Discovery(GRACE_S), Files()
    empty = GenerationId(1, 10, 0, hashlib.sha256(b"").hexdigest())
    history = History((empty, 0), (Recorded(empty, 0),), (Finished(1, 10, None, empty, 0, 1),))
    claims = claims_of("/l/a.log", history)
    assert [(inode, c.let_go) for inode, c in claims] == [(A, False)]
    for inode, claim in claims:
        d.claim(inode, claim)
    fs.put("/l/a.log.1", A, b"written while it was down\n", mtime_ns=9)
    assert decide(d, fs, {"/l/a.log": []}, 0.0).rotated == {"/l/a.log.1": "/l/a.log"}


def test_a_generation_let_go_empty_replaces_its_owners_held_claim_on_it() -> None:
    """A status file's claim on an empty generation, then its pipe lets that generation go empty:
    the let-go claim replaces the held one, so once the file has bytes it is a new pipe."""
    d, fs = Discovery(GRACE_S), Files()
    empty = GenerationId(1, 10, 0, hashlib.sha256(b"").hexdigest())
    d.claim(A, Claim("/l/a.log", empty, None, 0, let_go=False))
    d.claim(A, Claim("/l/a.log", empty, None, 0, 1))
    fs.put("/l/a.log.1", A, b"a late writer\n", mtime_ns=9)
    assert decide(d, fs, {"/l/a.log": []}, 0.0).start == ("/l/a.log.1",)


def test_an_older_status_files_claim_without_a_head_needs_the_same_inode_generation() -> None:
    """A let-go record written by an older version ([dev, ino, igen]) is the file only with the same igen."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log.1", A, b"x", igen=3)
    fs.put("/l/b.log", B, b"y", igen=4)
    fs.put("/l/c.log", C, b"z")
    d.claim(A, Claim("/l/a.log", None, 3))
    d.claim(B, Claim("/l/a.log", None, 5))
    d.claim(C, Claim("/l/a.log", None, None))
    decision = decide(d, fs, {"/l/a.log": []}, 0.0)
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}
    assert decision.start == ("/l/b.log", "/l/c.log")


def test_admits_refuses_another_pipes_inode_and_holds_a_free_one() -> None:
    """A new generation at a pipe's FILE is admitted unless another pipe holds or claims it; admitted, it is held."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A, b"a\n")
    d.claim(*fs.let_go("/l/a.log", "/l/a.log"))
    assert not d.admits("/l/a.log.1", Seen(A, 2, 1), fs.identify)
    assert d.admits("/l/a.log.1", Seen(B, 2, 1), fs.identify)
    assert not d.admits("/l/a.log", Seen(B, 2, 1), fs.identify)
    assert d.admits("/l/a.log", Seen(A, 2, 1), fs.identify)


def test_a_pipe_is_gone_only_after_its_path_matched_nothing_for_the_grace_period() -> None:
    """A missing path (mid-rotation) is not gone at once; after grace_s it is, and back again it is not."""
    d, fs = Discovery(GRACE_S), Files()
    running = {"/l/a.log": [A]}
    assert decide(d, fs, running, 0.0).gone == ()
    assert decide(d, fs, running, GRACE_S - 0.1).gone == ()
    assert decide(d, fs, running, GRACE_S).gone == ("/l/a.log",)
    fs.put("/l/a.log", B)
    assert decide(d, fs, running, GRACE_S + 1).gone == ()
    del fs.files["/l/a.log"]
    assert decide(d, fs, running, GRACE_S + 2).gone == ()


def test_a_failed_pipe_is_retried_after_the_delay_or_at_once_after_a_hup() -> None:
    """failed() holds a path back for retry_s; retry_now() (SIGHUP) releases it."""
    d, fs = Discovery(GRACE_S, retry_s=30.0), Files()
    fs.put("/l/a.log", A)
    d.failed("/l/a.log", 0.0)
    assert decide(d, fs, {}, 29.0).start == ()
    assert decide(d, fs, {}, 30.0).start == ("/l/a.log",)
    d.failed("/l/a.log", 31.0)
    assert decide(d, fs, {}, 32.0).start == ()
    d.retry_now()
    assert decide(d, fs, {}, 33.0).start == ("/l/a.log",)


def test_a_decision_is_due_by_time_at_a_retry_or_at_the_end_of_a_grace_period() -> None:
    """``due`` says when a scan that no event asked for must still run: a retry, a gone path."""
    d, fs = Discovery(GRACE_S, retry_s=30.0), Files()
    fs.put("/l/a.log", A)
    assert not d.due(0.0)
    d.failed("/l/a.log", 0.0)
    assert not d.due(29.0)
    assert d.due(30.0)
    decide(d, fs, {}, 30.0)
    assert not d.due(31.0)
    del fs.files["/l/a.log"]
    running = {"/l/a.log": [A]}
    decide(d, fs, running, 40.0)
    assert not d.due(40.0 + GRACE_S - 0.1)
    assert d.due(40.0 + GRACE_S)


def test_a_pipe_that_keeps_failing_waits_longer_each_time_up_to_the_cap() -> None:
    """30, 60, 120 ... s up to RETRY_MAX_S; READY or a SIGHUP starts again from 30 s."""
    d = Discovery(GRACE_S, retry_s=30.0)
    delays = [d.failed("/l/a.log", 0.0) for _ in range(8)]
    assert delays == [30.0, 60.0, 120.0, 240.0, 480.0, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S]
    d.succeeded("/l/a.log")
    assert d.failed("/l/a.log", 0.0) == 30.0
    assert d.failed("/l/a.log", 0.0) == 60.0
    d.retry_now()
    assert d.failed("/l/a.log", 0.0) == 30.0


def test_the_failure_count_of_a_path_that_went_away_is_forgotten() -> None:
    """A failed path that no longer matches (a date-named file removed) leaves no count behind."""
    d, fs = Discovery(GRACE_S, retry_s=30.0), Files()
    d.failed("/l/2026-12-01.log", 0.0)
    assert decide(d, fs, {}, 31.0).start == ()
    fs.put("/l/2026-12-01.log", A)
    assert d.failed("/l/2026-12-01.log", 32.0) == 30.0


def test_patterns_are_normalised_like_a_plain_file() -> None:
    """Relative patterns are made absolute against cwd, symlinks not resolved; glob characters kept."""
    assert normalise_pattern("logs/../nginx/*.log", "/var/log") == "/var/log/nginx/*.log"
    assert is_pattern("/var/log/*.log")
    assert is_pattern("/var/log/a.log.[0-9]")
    assert not is_pattern("/var/log/syslog")
    assert watched_directories(["/var/log/nginx/*.log", "/srv/*/app.log", "/var/log/syslog"]) == {
        "/var/log/nginx",
        "/srv",
        "/var/log",
    }


def test_the_agent_lock_name_ignores_order_and_repeats() -> None:
    """The same -f set in any order names one agent; another host or port another."""
    one = agent_lock_name(["/a/*.log", "/b/x"], "archive", 6514)
    assert one == agent_lock_name(["/b/x", "/a/*.log", "/a/*.log"], "archive", 6514)
    assert one != agent_lock_name(["/a/*.log", "/b/x"], "archive", 6515)
    assert one.startswith("tcppipe.agent.")
    assert one.endswith(".lock")


def test_a_status_file_owes_while_it_lists_held_generations_and_does_not_say_drained() -> None:
    """owes: a listed held generation may not have landed, unless the status says its pipe drained."""
    held = History(None, (Recorded(GenerationId(1, 10, 1, "0" * 64), 1),))
    assert owes(held, drained=False)
    assert not owes(held, drained=True)
    assert not owes(History(), drained=False)


def test_an_undrained_path_whose_file_is_another_pipes_gets_a_drain_only_pipe() -> None:
    """Rule 6: a retired pipe's path (its FILE now another pipe's file) that still owes gets a
    drain-only pipe, once; a path whose FILE is its own gets an ordinary pipe instead."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A)
    fs.put("/l/a.log.1", B)
    fs.put("/l/b.log", C)
    d.claim(B, Claim("/l/a.log", None, 7))
    d.left_undrained("/l/a.log.1")
    d.left_undrained("/l/b.log")
    decision = decide(d, fs, {"/l/a.log": [A, B]}, 0.0)
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}
    assert decision.drain == ("/l/a.log.1",)
    assert decision.start == ("/l/b.log",)
    running = {"/l/a.log": [A, B], "/l/a.log.1": [], "/l/b.log": [C]}
    assert decide(d, fs, running, 1.0).drain == ()
    assert decide(d, fs, {"/l/a.log": [A, B]}, 2.0).drain == ()  # ended, not undrained again: none


def test_an_undrained_path_that_matches_nothing_gets_a_drain_only_pipe() -> None:
    """Rule 6: a path gone (its FILE deleted or renamed) whose status still owes is drained too."""
    d, fs = Discovery(GRACE_S), Files()
    d.left_undrained("/l/gone.log")
    assert decide(d, fs, {}, 0.0).drain == ("/l/gone.log",)


def test_a_failed_drain_only_pipe_is_retried_with_the_back_off() -> None:
    """Rule 5 for a drain-only pipe: after a failure it waits its delay (doubled, the count kept
    though its path matches nothing), then is drained again; drained, it is not started again."""
    d, fs = Discovery(GRACE_S, retry_s=10.0), Files()
    d.left_undrained("/l/gone.log")
    assert decide(d, fs, {}, 0.0).drain == ("/l/gone.log",)
    assert d.failed("/l/gone.log", 1.0) == 10.0
    d.left_undrained("/l/gone.log")
    assert decide(d, fs, {}, 5.0).drain == ()
    assert decide(d, fs, {}, 11.0).drain == ("/l/gone.log",)
    assert d.failed("/l/gone.log", 12.0) == 20.0
    d.left_undrained("/l/gone.log")
    d.drained("/l/gone.log")
    assert decide(d, fs, {}, 40.0).drain == ()


def test_a_pipe_that_ended_holds_nothing_open() -> None:
    """ended: the inodes a finished pipe held open are no longer held (their numbers may be reused
    at once), so a new file in one of them is not refused as that pipe's."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/c.log", C)
    decide(d, fs, {"/l/c.log": [C]}, 0.0)
    d.ended("/l/c.log")
    assert d.admits("/l/a.log", Seen(C), fs.identify)


def test_a_drain_only_pipe_hands_over_only_for_a_file_resumed_after_its_list() -> None:
    """hands_over: a new file at FILE, or one the status file lists, is taken over by an ordinary
    pipe; a generation the path let go (older than the list), another pipe's file, or one held, is not."""
    d, fs = Discovery(GRACE_S), Files()
    fs.put("/l/a.log", A, b"let go\n", mtime_ns=5)
    fs.put("/l/b.log", B, b"b's\n")
    d.claim(*fs.let_go("/l/a.log", "/l/a.log"))
    listed = fs.let_go("/l/b.log", "/l/a.log")
    listed[1].let_go = False
    d.claim(*listed)
    decide(d, fs, {"/l/a.log": [], "/l/c.log": [C]}, 0.0)
    assert not d.hands_over("/l/a.log", Seen(A, 7, 5), fs.identify)
    assert d.hands_over("/l/a.log", Seen(B, 4, 1), fs.identify)
    assert not d.hands_over("/l/a.log", Seen(C, 1, 1), fs.identify)
    fs.put("/l/a.log", (1, 13), b"new\n")
    assert d.hands_over("/l/a.log", Seen((1, 13), 4, 1), fs.identify)
    d.claim((1, 13), Claim("/l/c.log", None, None, 4, 1))
    assert not d.hands_over("/l/a.log", Seen((1, 13), 4, 1), fs.identify)
