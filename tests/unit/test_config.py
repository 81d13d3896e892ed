"""Config parsing and host matching: every error named by file and line, nothing crashes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcppipe.config import Entry, candidates, host_matches, parse, parse_line


@pytest.mark.parametrize(
    ("line", "host", "remote", "local"),
    [
        (
            "foo.com:/var/log/messages | /var/log/foo.com/messages",
            "foo.com",
            "/var/log/messages",
            "/var/log/foo.com/messages",
        ),
        ("  10.0.0.1:/a|/b  ", "10.0.0.1", "/a", "/b"),
        ("[::1]:/var/log/x | /srv/x", "::1", "/var/log/x", "/srv/x"),
        (
            "ctl.insnw.net:/opt/ins-accel/access_log/access.log\t|\t/var/log/z1/ctl/messages",
            "ctl.insnw.net",
            "/opt/ins-accel/access_log/access.log",
            "/var/log/z1/ctl/messages",
        ),
        ("h:/a/./b/../c | /d//e", "h", "/a/c", "/d/e"),
    ],
)
def test_good_lines(line: str, host: str, remote: str, local: str) -> None:
    """Entries parse with white space around '|' and at the ends ignored and paths normalised."""
    entry = parse_line(line)
    assert isinstance(entry, Entry)
    assert (entry.host, entry.remote, entry.local) == (host, remote, local)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("foo.com:/a", "exactly one '|'"),
        ("foo.com:/a | /b | /c", "exactly one '|'"),
        ("foo.com /a | /b", "expected <host>:<remote path>"),
        ("foo.com:a | /b", "not absolute"),
        ("foo.com:/a | b", "not absolute"),
        ("foo.com:/a | ", "missing local path"),
        ("bad_host!:/a | /b", "not a host name"),
        ("[::1/a | /b", "[address]:/path"),
        ("[foo]:/a | /b", "not an IPv6 address"),
        (":/a | /b", "not a host name"),
    ],
)
def test_bad_lines_give_a_reason(line: str, reason: str) -> None:
    """Each malformed line is turned into a reason, not an exception."""
    result = parse_line(line)
    assert isinstance(result, str)
    assert reason in result


def test_errors_are_collected_with_file_and_line() -> None:
    """parse() reports every problem as FILE:LINE: reason and keeps the good entries."""
    text = "# comment\n\nh:/a | /x\nbroken\nh:/b | /x\nh:/c | /y\n"
    entries, errors = parse(text, "/etc/tcppipe.conf")
    assert [e.line for e in entries] == [3, 6]
    assert [str(e) for e in errors] == [
        "/etc/tcppipe.conf:4: expected exactly one '|' between the remote and the local file",
        "/etc/tcppipe.conf:5: local file /x is already written by line 3",
    ]


def test_host_matching_by_address_and_by_resolved_name() -> None:
    """An IP entry matches that address (IPv4-mapped too); a name matches the addresses it resolves to."""
    by_ip = Entry("127.0.0.2", "/a", "/x", 1)
    assert host_matches(by_ip, "127.0.0.2")
    assert host_matches(by_ip, "::ffff:127.0.0.2")
    assert not host_matches(by_ip, "127.0.0.1")
    by_name = Entry("archive.example", "/a", "/y", 2)
    assert host_matches(by_name, "10.0.0.5", ["10.0.0.5", "10.0.0.6"])
    assert not host_matches(by_name, "10.0.0.7", ["10.0.0.5"])
    assert not host_matches(by_name, "not-an-ip", ["10.0.0.5"])


def test_candidates_keep_file_order() -> None:
    """Lookup returns the entries for the named remote path, first line first."""
    entries, _ = parse("a:/log | /x\nb:/other | /y\nc:/log | /z\n", "f")
    assert [e.host for e in candidates(entries, "/log")] == ["a", "c"]


@given(st.text(max_size=300))
def test_parser_never_crashes(text: str) -> None:
    """Any text gives entries and errors, every error naming a line of the text."""
    entries, errors = parse(text, "gen.conf")
    lines = len(text.splitlines())
    assert all(1 <= e.line <= lines for e in errors)
    assert all(str(e).startswith(f"gen.conf:{e.line}: ") for e in errors)
    assert all(e.remote.startswith("/") and e.local.startswith("/") for e in entries)


@given(
    st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.lists(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), min_size=1, max_size=4),
    st.lists(st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), min_size=1, max_size=4),
)
def test_generated_entries_round_trip(host: str, remote: list[str], local: list[str]) -> None:
    """A well-formed generated line parses back to its parts."""
    r = "/" + "/".join(remote)
    loc = "/" + "/".join(local)
    entry = parse_line(f"{host}:{r} | {loc}")
    assert isinstance(entry, Entry)
    import posixpath

    assert (entry.host, entry.remote, entry.local) == (host, posixpath.normpath(r), posixpath.normpath(loc))
