"""The host agent's pure decisions: which paths get a pipe, which are rotated names, which pipes are gone."""

from __future__ import annotations

import ast
from pathlib import Path

from tcppipe.discovery import (
    Discovery,
    agent_lock_name,
    is_pattern,
    normalise_pattern,
    watched_directories,
)

GRACE_S = 5.0
A, B, C = (1, 10), (1, 11), (1, 12)


def test_discovery_imports_no_io_layer() -> None:
    """discovery.py is pure: no asyncio, sockets or adapters."""
    tree = ast.parse((Path(__file__).resolve().parents[2] / "src" / "tcppipe" / "discovery.py").read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not names & {"asyncio", "socket", "os", "tcppipe.client", "tcppipe.host_agent"}


def test_every_new_match_gets_a_pipe_once() -> None:
    """Paths found and not running are started, sorted; running ones are not started again."""
    d = Discovery(GRACE_S)
    assert d.decide({"/l/b.log": B, "/l/a.log": A}, {}, 0.0).start == ("/l/a.log", "/l/b.log")
    assert d.decide({"/l/b.log": B, "/l/a.log": A}, {"/l/a.log": [A], "/l/b.log": [B]}, 1.0).start == ()


def test_a_rotated_name_holding_a_running_pipes_inode_is_skipped() -> None:
    """a.log.1 with the inode a.log's pipe holds (draining) is that pipe's generation, never a pipe."""
    d = Discovery(GRACE_S)
    d.decide({"/l/a.log": A}, {}, 0.0)
    decision = d.decide({"/l/a.log": B, "/l/a.log.1": A}, {"/l/a.log": [A, B]}, 1.0)
    assert decision.start == ()
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}


def test_the_claim_outlives_the_pipe_holding_it_while_the_inode_still_matches() -> None:
    """Once a.log's pipe has let go of its old generation, a.log.1 (that inode) is still not a new pipe."""
    d = Discovery(GRACE_S)
    d.decide({"/l/a.log": A}, {"/l/a.log": [A]}, 0.0)
    decision = d.decide({"/l/a.log": B, "/l/a.log.1": A}, {"/l/a.log": [B]}, 1.0)
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}
    assert d.decide({"/l/a.log": B, "/l/a.log.2": A}, {"/l/a.log": [B]}, 2.0).rotated == {"/l/a.log.2": "/l/a.log"}


def test_a_started_path_claims_its_inode_at_once() -> None:
    """The inode of a path that gets a pipe is claimed by that scan, before the pipe reports what it holds."""
    d = Discovery(GRACE_S)
    d.decide({"/l/a.log": A, "/l/a.log.1": B}, {}, 0.0)
    assert not d.admits("/l/a.log.1", A)
    assert not d.admits("/l/a.log", B)


def test_a_claim_ends_with_its_inode_so_a_reused_inode_is_a_new_pipe() -> None:
    """After the old generation is deleted, a new file that reuses its inode number gets a pipe."""
    d = Discovery(GRACE_S)
    d.decide({"/l/a.log": A, "/l/a.log.1": C}, {"/l/a.log": [A, C]}, 0.0)
    d.decide({"/l/a.log": A}, {"/l/a.log": [A]}, 1.0)  # a.log.1 deleted, the pipe let go of it
    assert d.decide({"/l/a.log": A, "/l/new.log": C}, {"/l/a.log": [A]}, 2.0).start == ("/l/new.log",)


def test_status_file_claims_hold_across_a_restart() -> None:
    """Inodes the last run's status file listed for a.log are a.log's before its pipe runs again."""
    d = Discovery(GRACE_S)
    d.claim("/l/a.log", [A, B])
    decision = d.decide({"/l/a.log": B, "/l/a.log.1": A}, {}, 0.0)
    assert decision.start == ("/l/a.log",)
    assert decision.rotated == {"/l/a.log.1": "/l/a.log"}


def test_admits_refuses_another_pipes_inode_and_claims_a_free_one() -> None:
    """A new generation at a pipe's FILE is admitted unless another pipe claims it; admitted, it is claimed."""
    d = Discovery(GRACE_S)
    d.claim("/l/a.log", [A])
    assert not d.admits("/l/a.log.1", A)
    assert d.admits("/l/a.log.1", B)
    assert not d.admits("/l/a.log", B)
    assert d.admits("/l/a.log", A)


def test_a_pipe_is_gone_only_after_its_path_matched_nothing_for_the_grace_period() -> None:
    """A missing path (mid-rotation) is not gone at once; after grace_s it is, and back again it is not."""
    d = Discovery(GRACE_S)
    running = {"/l/a.log": [A]}
    assert d.decide({}, running, 0.0).gone == ()
    assert d.decide({}, running, GRACE_S - 0.1).gone == ()
    assert d.decide({}, running, GRACE_S).gone == ("/l/a.log",)
    assert d.decide({"/l/a.log": B}, running, GRACE_S + 1).gone == ()
    assert d.decide({}, running, GRACE_S + 2).gone == ()


def test_a_failed_pipe_is_retried_after_the_delay_or_at_once_after_a_hup() -> None:
    """failed() holds a path back for retry_s; retry_now() (SIGHUP) releases it."""
    d = Discovery(GRACE_S, retry_s=30.0)
    found = {"/l/a.log": A}
    d.failed("/l/a.log", 0.0)
    assert d.decide(found, {}, 29.0).start == ()
    assert d.decide(found, {}, 30.0).start == ("/l/a.log",)
    d.failed("/l/a.log", 31.0)
    assert d.decide(found, {}, 32.0).start == ()
    d.retry_now()
    assert d.decide(found, {}, 33.0).start == ("/l/a.log",)


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
