"""Config globs, placeholders and networks (issue 12): parsing, every error with FILE:LINE,
lookup precedence, substitution, and the rule that no two pipes land in one file."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tcppipe.config import Entry, admit, candidates, certificate_host, literal_of, parse, parse_line
from tcppipe.templates import could_share_a_file, split_template, template_base


def entry(line: str) -> Entry:
    parsed = parse_line(line)
    assert isinstance(parsed, Entry), parsed
    return parsed


@pytest.mark.parametrize(
    ("line", "host", "remote", "local", "glob"),
    [
        ("w:/var/log/nginx/*.log | /srv/w/{name}", "w", "/var/log/nginx/*.log", "/srv/w/{name}", True),
        ("w:/var/log/app-?.[lt]og | /srv/w/{name}.gz", "w", "/var/log/app-?.[lt]og", "/srv/w/{name}.gz", True),
        (
            "10.1.0.0/16:/var/log/syslog | /srv/{host}/syslog",
            "10.1.0.0/16",
            "/var/log/syslog",
            "/srv/{host}/syslog",
            False,
        ),
        ("[fd00::/64]:/var/log/x | /srv/{host}/x", "fd00::/64", "/var/log/x", "/srv/{host}/x", False),
        ("[::ffff:10.0.0.0/104]:/x | /srv/{host}/x", "10.0.0.0/8", "/x", "/srv/{host}/x", False),
        ("10.0.0.5/32:/x | /srv/one", "10.0.0.5", "/x", "/srv/one", False),
        ("[fd00::1/128]:/x | /srv/one", "fd00::1", "/x", "/srv/one", False),
        ("Web1.Example.NET.:/x | /srv/{host}/x", "Web1.Example.NET.", "/x", "/srv/web1.example.net/x", False),
        ("[fd00:0::1]:/x | /srv/{host}/x", "fd00:0::1", "/x", "/srv/fd00::1/x", False),
        ("h:/var/log/a[*]b.log | /srv/ab", "h", "/var/log/a*b.log", "/srv/ab", False),
        ("h:/var/log/a[.log | /srv/ab", "h", "/var/log/a[.log", "/srv/ab", False),
        ("h:/var/l[?]g/*.log | /srv/{name}", "h", "/var/l?g/*.log", "/srv/{name}", True),
        ("h:/logs/*.log | //srv//{name}", "h", "/logs/*.log", "/srv/{name}", True),
    ],
)
def test_glob_and_network_lines_parse(line: str, host: str, remote: str, local: str, glob: bool) -> None:
    """Globs, networks (a one-address network is that address) and a single host's {host} parse to their parts."""
    e = entry(line)
    assert (e.host, e.remote, e.local, e.glob) == (host, remote, local, glob)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("h:/var/log/nginx/*.log | /srv/one.log", "the local path must use {name}"),
        ("h:/var/log/x.log | /srv/{name}", "{name} in the local path needs a glob"),
        ("h:/var/*/x.log | /srv/{name}", "allowed only in its last component"),
        ("h:/var/log[12]/x.log | /srv/x", "allowed only in its last component"),
        ("10.1.0.0/16:/x | /srv/x", "network 10.1.0.0/16 has many hosts: the local path must use {host}"),
        ("[fd00::/64]:/x | /srv/x", "must use {host}"),
        ("10.1.0.1/16:/x | /srv/{host}", "not a network"),
        ("10.1.0.0/33:/x | /srv/{host}", "not a network"),
        ("[10.0.0.0/8]:/x | /srv/{host}", "not an IPv6 network"),
        ("h:/x | /srv/{nope}", "unknown placeholder {nope}"),
        ("h:/x | /srv/{host", "'{' or '}'"),
        ("h:/x | /srv/host}", "'{' or '}'"),
        ("h:/l/* | /srv/{name}-{host}", "more than one placeholder"),
        ("h:/l/* | /srv/{name}/{name}", "{name} is used more than once"),
        ("h:/l/* | /srv/{name}/../x", "removed by '..'"),
    ],
)
def test_glob_and_placeholder_errors_give_a_reason(line: str, reason: str) -> None:
    """Each misuse of a glob, a placeholder or a network is a reason, not an exception."""
    result = parse_line(line)
    assert isinstance(result, str)
    assert reason in result


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("h:/a.log | /srv/x", "g:/b.log | /srv/x"),  # two literals (today's rule)
        ("h:/l/*.log | /srv/h/{name}", "h:/other.log | /srv/h/b.log"),  # b.log fits *.log
        ("h:/l/*.log | /srv/h/{name}", "g:/l/*.txt | /srv/h/{name}"),  # two {name}s are assumed to overlap
        ("10.1.0.0/16:/s | /srv/{host}/s", "10.2.0.0/16:/s | /srv/{host}/s"),  # with TLS both could be one name
        ("10.1.0.0/16:/s | /srv/{host}/s", "web1:/t | /srv/web1/s"),  # web1 could be a certificate's name
        ("10.1.0.0/16:/s | /srv/{host}/s", "10.1.2.3:/t | /srv/{host}/s"),  # 10.1.2.3 is in the network
        ("h:/l/* | /srv/{name}", "10.0.0.0/8:/s | /srv/{host}"),  # a file name could be an address
        ("h:/l/*.log | /srv/a-{name}", "g:/m/* | /srv/a-b{name}"),  # a-{name} with name=b... meets a-b{name}
    ],
)
def test_entries_that_could_share_a_file_are_an_error_naming_both_lines(first: str, second: str) -> None:
    """A second entry whose local path could be a file the first writes is FILE:LINE naming both lines."""
    entries, errors = parse(f"# pipes\n{first}\n{second}\n", "/etc/tcppipe.conf")
    assert [e.line for e in entries] == [2]
    assert len(errors) == 1
    text = str(errors[0])
    assert text.startswith("/etc/tcppipe.conf:3: ")
    assert "line 2" in text
    if "{" in first + second:
        assert text.endswith("(also line 2)")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("h:/l/*.log | /srv/h/{name}", "h:/other.log | /srv/h/b.txt"),  # b.txt never fits *.log
        ("h:/l/*.log | /srv/h/{name}", "g:/l/*.log | /srv/g/{name}"),  # another directory
        ("h:/l/*.log | /srv/h/{name}", "h:/l/a.log | /srv/special/a.log"),  # the literal beats the glob elsewhere
        ("h:/l/*.log | /srv/h/{name}", "h:/m/*.log | /srv/h/{name}/x"),  # other depth
        ("h:/l/*.log | /srv/h/a-{name}", "g:/m/* | /srv/h/b-{name}"),  # fixed prefixes differ
        ("h:/l/*.log | /srv/h/{name}.gz", "g:/m/* | /srv/h/{name}.xz"),  # fixed suffixes differ
        ("10.1.0.0/16:/s | /srv/{host}/s", "10.2.0.9:/t | /srv/{host}/s"),  # 10.2.0.9 is outside 10.1/16
        ("10.1.0.0/16:/s | /srv/{host}/s", "10.1.0.0/16:/t | /srv/{host}/t"),
        ("web1:/l/*.log | /srv/{host}/{name}", "web2:/l/*.log | /srv/{host}/{name}"),  # known hosts differ
    ],
)
def test_entries_that_can_never_share_a_file_are_accepted(first: str, second: str) -> None:
    """Entries whose local paths differ in a fixed part, or whose values cannot fit, are both kept."""
    entries, errors = parse(f"{first}\n{second}\n", "f")
    assert errors == []
    assert [e.line for e in entries] == [1, 2]


def test_check_reports_every_problem_at_once() -> None:
    """Self errors and overlaps are all collected, each FILE:LINE, good entries kept."""
    text = (
        "h:/l/*.log | /srv/h/{name}\n"
        "h:/l/*.log | /srv/one\n"
        "10.0.0.0/8:/s | /srv/s\n"
        "h:/x | /srv/h/x.log\n"
        "h:/y | /srv/y/{name}\n"
        "h:/z | /srv/z\n"
    )
    entries, errors = parse(text, "c")
    assert [e.line for e in entries] == [1, 6]
    assert [str(e).split(": ", 1)[0] for e in errors] == ["c:2", "c:3", "c:4", "c:5"]
    assert str(errors[2]).endswith("(also line 1)")


def test_glob_matches_only_normal_paths_in_its_directory() -> None:
    """A glob entry takes a normalised path in its own directory whose base name fits and is a name."""
    e = entry("h:/var/log/nginx/*.log | /srv/{name}")
    assert e.matches_path("/var/log/nginx/a.log")
    assert e.matches_path("/var/log/nginx/.hidden.log")
    for path in (
        "/var/log/nginx/a.txt",
        "/var/log/nginx/sub/a.log",
        "/var/log/a.log",
        "/var/log/nginx//a.log",
        "/var/log/nginx/./a.log",
        "/var/log/nginx/../nginx/a.log",
        "/var/log/nginx/new\nline.log",
        "/var/log/nginx/nul\0.log",
        "/var/log/nginx/bad\udc80.log",
    ):
        assert not e.matches_path(path), path
    dots = entry("h:/var/log/* | /srv/{name}")
    assert not dots.matches_path("/var/log/..")
    assert not dots.matches_path("/var/log/.")
    assert not dots.matches_path("/var/log/")


def test_destination_substitutes_name_and_host() -> None:
    """{name} is the matched base name and {host} the label; a bad label gives no destination."""
    e = entry("10.0.0.0/8:/var/log/*.log | /srv/{host}/logs/{name}.gz")
    assert e.destination_for("/var/log/a.log", "10.1.2.3") == "/srv/10.1.2.3/logs/a.log.gz"
    assert e.destination_for("/var/log/a.log", "web1.example") == "/srv/web1.example/logs/a.log.gz"
    assert e.destination_for("/var/log/a.txt", "10.1.2.3") is None
    for label in ("..", ".", "", "a/b", "Web1", "web1.", "*.example", "fd00:0::1"):
        assert e.destination_for("/var/log/a.log", label) is None, label


def test_literal_entries_come_before_globs_then_file_order() -> None:
    """Precedence: entries naming the path literally first, then matching globs, each in file order."""
    entries, errors = parse(
        "a:/l/*.log | /srv/a/{name}\nb:/l/x.log | /srv/b\nc:/l/x.* | /srv/c/{name}\nd:/l/x.log | /srv/d\n", "f"
    )
    assert errors == []
    assert [e.host for e in candidates(entries, "/l/x.log")] == ["b", "d", "a", "c"]
    assert [e.host for e in candidates(entries, "/l/y.log")] == ["a"]


def test_admit_fills_host_from_the_address_or_the_certificate_never_the_client() -> None:
    """A network entry's {host} is the source address (canonical), or with TLS the certificate's name."""
    e = entry("10.0.0.0/8:/s | /srv/{host}/s")
    admitted = admit(e, "/s", "10.1.2.3")
    assert admitted is not None
    assert (admitted.host, admitted.remote, admitted.local) == ("10.1.2.3", "/s", "/srv/10.1.2.3/s")
    assert admitted.source == e
    assert admitted.defined_as == (e.host, e.remote, e.local)
    folded = admit(e, "/s", "::ffff:10.0.0.7")
    assert folded is not None
    assert folded.local == "/srv/10.0.0.7/s"
    assert admit(e, "/s", "11.0.0.1") is None
    assert admit(e, "/t", "10.0.0.1") is None
    by_cert = admit(e, "/s", "10.0.0.1", (["*.example", "Web1.Example."], ["10.0.0.1"]))
    assert by_cert is not None
    assert by_cert.local == "/srv/web1.example/s"
    assert admit(e, "/s", "10.0.0.1", (["*.example"], ["10.0.0.1"])) is None
    assert admit(e, "/s", "11.0.0.1", (["web1.example"], [])) is None
    v6 = entry("[fd00::/64]:/s | /srv/{host}/s")
    admitted6 = admit(v6, "/s", "fd00:0:0:0::5")
    assert admitted6 is not None
    assert admitted6.local == "/srv/fd00::5/s"


def test_admit_keeps_single_host_rules() -> None:
    """Single-host entries match as before and come back unchanged when nothing is to fill."""
    plain = entry("127.0.0.2:/a | /x")
    assert admit(plain, "/a", "127.0.0.2") is plain
    assert admit(plain, "/a", "127.0.0.3") is None
    named = entry("archive.example:/l/*.log | /srv/{host}/{name}")
    assert admit(named, "/l/a.log", "10.0.0.5", None, ["10.0.0.5"]) is not None
    assert admit(named, "/l/a.log", "10.0.0.6", None, ["10.0.0.5"]) is None
    by_cert = admit(named, "/l/a.log", "192.0.2.1", (["ARCHIVE.example"], []))
    assert by_cert is not None
    assert by_cert.local == "/srv/archive.example/a.log"
    assert admit(named, "/l/a.log", "10.0.0.5", (["other.example"], [])) is None


def test_certificate_host_is_the_first_plain_dns_name() -> None:
    """Only a plain host name a certificate proves can be {host}: no wildcard, address, '.' or '..'."""
    assert certificate_host(["*.x", "10.0.0.1", ".", "..", "a/b", "B.Example."]) == "b.example"
    assert certificate_host(["*.x"]) is None
    assert certificate_host([]) is None


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [("a[*]b", "a*b"), ("[[]x]", "[x]"), ("a[", "a["), ("[]]", "]"), ("a*", None), ("[ab]", None), ("[!a]", None)],
)
def test_literal_of_a_pattern(pattern: str, literal: str | None) -> None:
    """A pattern that matches one string only is that string (so '[*]' escapes '*')."""
    assert literal_of(pattern) == literal


NAMES = st.text(alphabet=st.sampled_from("ab.-_/\0\n{}*é"), min_size=0, max_size=8)
LABELS = st.one_of(
    st.ip_addresses().map(str), st.text(alphabet=st.sampled_from("ab.-/:0"), max_size=8), st.just(".."), st.just(".")
)
FIXED = st.text(alphabet=st.sampled_from("ab.-_"), max_size=3)


@given(
    st.lists(st.text(alphabet=st.sampled_from("ab.-_"), min_size=1, max_size=4), max_size=3),
    FIXED,
    FIXED,
    st.booleans(),
    NAMES,
    LABELS,
)
def test_destinations_stay_inside_the_template_directory(
    head: list[str], pre: str, suf: str, host_first: bool, name: str, label: str
) -> None:
    """Whatever name and label come in, a destination is inside the template's base directory, normal,
    and holds no '.' or '..' component."""
    slots = [f"{pre}{{name}}{suf}", "{host}"] if not host_first else ["{host}", f"{pre}{{name}}{suf}"]
    local = "/" + "/".join([*head, *slots])
    line = f"10.0.0.0/8:/var/log/* | {local}"
    e = parse_line(line)
    assume(isinstance(e, Entry))
    assert isinstance(e, Entry)
    template = split_template(e.local)
    assert not isinstance(template, str)
    base = template_base(template)
    dest = e.destination_for(f"/var/log/{name}", label)
    if dest is None:
        return
    assert dest.startswith(base.rstrip("/") + "/")
    assert posixpath.normpath(dest) == dest
    assert not {".", ".."} & set(dest.split("/"))
    assert "\0" not in dest


FILLERS = st.lists(st.sampled_from(["a", "b", "a.log", "b.log", "xa", "10.0.0.1", "web1"]), max_size=2)
NAME_SLOTS = st.sampled_from(["{name}", "x{name}", "{name}.log", "a{name}"])
HOSTS = st.sampled_from(["10.0.0.0/24", "10.0.0.1", "web1"])
REMOTES = st.sampled_from(["*", "*.log", "a*", "?.log", "b.log"])


@st.composite
def entries_and_values(draw: st.DrawFn, directory: str) -> tuple[Entry, str, str]:
    """A valid entry (random host, glob and template shape) and a name and label to fill it with."""
    host, remote = draw(HOSTS), draw(REMOTES)
    parts = draw(FILLERS)
    if "*" in remote or "?" in remote:
        parts.append(draw(NAME_SLOTS))
    if "/" in host or draw(st.booleans()):
        parts.append("{host}")
    parts = draw(st.permutations(parts))
    line = f"{host}:/{directory}/{remote} | /srv/{'/'.join(parts)}"
    e = parse_line(line)
    assert isinstance(e, Entry), (line, e)
    name = draw(st.sampled_from(["a", "b", "a.log", "b.log", "xa", "b.log.log", "10.0.0.1", "web1", "ax.log"]))
    label = draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "web1"])) if "/" in host else host
    return e, f"/{directory}/{name}", label


@given(entries_and_values("la"), entries_and_values("lb"))
def test_no_two_accepted_entries_produce_one_file(a: tuple[Entry, str, str], b: tuple[Entry, str, str]) -> None:
    """The overlap check is sound: entries it lets stand together never give one destination."""
    (ea, path_a, label_a), (eb, path_b, label_b) = a, b
    da, db = ea.destination_for(path_a, label_a), eb.destination_for(path_b, label_b)
    if da is not None and da == db:
        assert could_share_a_file(ea, eb)
        assert could_share_a_file(eb, ea)
        _entries, errors = parse(f"{ea.host}:{ea.remote} | {ea.local}\n{eb.host}:{eb.remote} | {eb.local}\n", "f")
        assert errors


@given(
    entries_and_values("l"),
    st.sampled_from(["a", "b", "a.log", "b.log", "xa", "10.0.0.1", "ax.log"]),
    st.sampled_from(["10.0.0.1", "10.0.0.2", "web1"]),
)
def test_one_entry_never_puts_two_pipes_in_one_file(a: tuple[Entry, str, str], other: str, label: str) -> None:
    """An accepted entry's destination names its file and host back: two pipes, two files."""
    e, path, own = a
    if e.network is None:
        label = own
    first, second = e.destination_for(path, own), e.destination_for(f"/l/{other}", label)
    if first is not None and first == second:
        assert (path, own) == (f"/l/{other}", label)


@given(st.lists(entries_and_values("l"), min_size=2, max_size=6))
def test_the_overlap_index_finds_what_comparing_every_pair_finds(drawn: list[tuple[Entry, str, str]]) -> None:
    """parse() compares a new entry only with indexed candidates; it flags exactly the entries that a
    comparison with every earlier accepted entry would flag."""
    lines = [f"{e.host}:{e.remote} | {e.local}" for e, _path, _label in drawn]
    entries, errors = parse("\n".join(lines) + "\n", "f")
    kept: list[Entry] = []
    flagged: list[int] = []
    for number, line in enumerate(lines, start=1):
        e = parse_line(line)
        assert isinstance(e, Entry)
        if any(e.local == k.local or could_share_a_file(e, k) for k in kept):
            flagged.append(number)
        else:
            kept.append(e)
    assert [err.line for err in errors] == flagged
    assert [e.line for e in entries] == [n for n in range(1, len(lines) + 1) if n not in flagged]
