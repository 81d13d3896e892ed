"""-h's receivers: the list's syntax, the pipe's key, and the order addresses are tried in."""

from __future__ import annotations

import pytest

from tcppipe.errors import UsageError
from tcppipe.receivers import STABLE_S, Receiver, Rotation, Target, parse_receivers, pipe_host
from tcppipe.state import PipeKey


def test_entries_take_their_own_port_or_dash_p() -> None:
    """HOST, HOST:PORT, [V6], [V6]:PORT and a bare IPv6 literal each name one receiver, in order."""
    got = parse_receivers("B.example.,a:7000,[::1]:7001,[fe80::2],::3", 6514)
    assert got == (
        Receiver("b.example", 6514),
        Receiver("a", 7000),
        Receiver("::1", 7001),
        Receiver("fe80::2", 6514),
        Receiver("::3", 6514),
    )
    assert got[2].label == "[::1]:7001"


@pytest.mark.parametrize("text", ["a,,b", "a:0", "a:x", "[::1", "[::1]x", ",".join(["h"] * 65)])
def test_a_malformed_list_is_a_usage_error(text: str) -> None:
    """An empty entry, a bad port, an unclosed bracket or a huge list is refused in one line."""
    with pytest.raises(UsageError):
        parse_receivers(text, 6514)


def test_the_key_is_the_set_and_one_host_keeps_its_old_key() -> None:
    """a,b and B,a,a name one pipe (-I finds it either way); one host is keyed as before lists existed."""
    assert pipe_host("a,b", 6514) == pipe_host(" B ,a,a", 6514) == pipe_host("a:6514,b", 6514) == "a:6514,b:6514"
    assert pipe_host("a:7000,b", 6514) == pipe_host("b:6514,a:7000", 1) == "a:7000,b:6514"
    assert pipe_host("[::1]", 6514) == "[::1]:6514"
    assert pipe_host("::1", 6514) == "::1"  # a bare IPv6 literal is one plain host
    assert pipe_host("Archive.Example.NET.", 6514) == "archive.example.net"
    assert PipeKey.from_options("/f", "b,a", 6514) == PipeKey.from_options("/f", "a,b", 6514)


def test_rotation_moves_on_at_once_and_backs_off_per_round() -> None:
    """A failure moves to the next address; only a whole round of failures since READY is a back-off."""
    a, b = Receiver("a", 1), Receiver("b", 1)
    rotation = Rotation((a, b))
    rotation.start_round([["10.0.0.1", "10.0.0.2"], None])
    assert [t.label for t in rotation.targets] == ["a:1 (10.0.0.1)", "a:1 (10.0.0.2)", "b:1"]
    assert not rotation.failed("refused", 0.0)
    assert not rotation.failed("refused", 0.0)
    assert rotation.current == Target(b, None)
    assert rotation.ready(1.0) is None  # the first READY: no move to report
    # b died after STABLE_S: what failed before is forgotten; a is tried at once, in a new round
    assert not rotation.failed("dead peer", 1.0 + STABLE_S)
    assert rotation.round_due
    rotation.start_round([["10.0.0.1"], ["10.0.0.9"]])
    assert rotation.ready(20.0) == Target(b, None)  # a answered: the pipe moved from b
    assert not rotation.failed("lost", 20.0 + STABLE_S)
    assert rotation.failed("refused", 31.0)  # a, then b: the round failed
    rotation.backed_off()
    assert rotation.failures == []


def test_receivers_that_answer_ready_and_drop_are_a_failed_round() -> None:
    """READY followed by a loss within STABLE_S does not forget the round's failures: back off."""
    rotation = Rotation((Receiver("a", 1), Receiver("b", 1)))
    rotation.start_round([["10.0.0.1"], ["10.0.0.2"]])
    rotation.ready(0.0)
    assert not rotation.failed("lost", 0.1)
    rotation.ready(0.2)
    assert rotation.failed("lost", 0.3)  # every receiver took the pipe and dropped it: back off


def test_a_names_addresses_keep_the_order_first_seen() -> None:
    """A round-robin answer in another order does not reorder the round; new addresses go last."""
    rotation = Rotation((Receiver("rr", 1),))
    rotation.start_round([["10.0.0.1", "10.0.0.2"]])
    rotation.start_round([["10.0.0.3", "10.0.0.2", "10.0.0.1"]])
    assert [t.address for t in rotation.targets] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    rotation.start_round([["10.0.0.3", "10.0.0.1"]])
    assert [t.address for t in rotation.targets] == ["10.0.0.1", "10.0.0.3"]
