"""The server's pipe definitions: parse /etc/tcppipe.conf and look entries up.

Rule 1: pure. Parsing takes text, lookup takes addresses already resolved and
certificate names already verified; no file is read and no name is resolved
here (``server.py`` does both).

Rule 2: errors are collected, never raised one at a time, so ``--check``,
start-up and reload report every problem, each as ``FILE:LINE: reason``.

Format, one entry a line (``#`` lines and blank lines ignored)::

    <host>:<absolute remote path> | <absolute local path>
    <host>:<absolute remote path> | jetstream:<STREAM>/<subject>

The second form appends to a NATS JetStream subject instead of a file
(``JetStreamTarget``); it takes no placeholders and no glob, and one subject
is written by one entry only.

``host`` is a name, an IP address or a network (``10.1.0.0/16``); IPv6 is
bracketed: ``[::1]:/var/log/x | /srv/x``, ``[fd00::/64]:/var/log/x | ...``.
The last component of the remote path may be an fnmatch glob (``*``, ``?``,
``[...]``); the local path may then use ``{name}``, the matched file's base
name, and ``{host}``: the entry's own host, or for a network entry the
connection's source address (with a required client certificate: the first
host name the certificate proves). Never anything the client says.

Rule 3 (where bytes may go) is ``templates.py``'s; this module applies it:
``parse_line`` refuses an entry whose values are not all in its local path (a
glob without ``{name}``, a network without ``{host}``), and ``parse`` an entry
that could land in an earlier entry's file.

Rule 4 (precedence): for a HELLO path, the entries naming it literally come
first, then the glob entries matching it, each in file order; the first whose
host matches the connection wins.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from tcppipe.templates import (
    HOST,
    NAME,
    Address,
    Network,
    OverlapIndex,
    host_label_problem,
    is_host_name,
    name_problem,
    parse_address,
    placeholder_keys,
    slot_keys,
    split_template,
    substitute,
)

_GLOB_MAGIC = re.compile(r"[*?\[]")
JETSTREAM_PREFIX = "jetstream:"
# NATS stream names: no whitespace, no subject syntax (., *, >) and no path separators.
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
# One subject token: printable ASCII without whitespace, '.', '*' or '>' (a literal subject, never a wildcard).
_SUBJECT_TOKEN = re.compile(r"[!-)+-\-/-=?-~]+")
MAX_SUBJECT_CHARS = 512


@dataclass(frozen=True, slots=True)
class JetStreamTarget:
    """A pipe's destination in NATS JetStream: ``subject`` in stream ``stream``."""

    stream: str
    subject: str

    def __str__(self) -> str:
        return f"{JETSTREAM_PREFIX}{self.stream}/{self.subject}"


def parse_jetstream(text: str) -> JetStreamTarget | str:
    """``jetstream:STREAM/SUBJECT`` as a target, or the reason it is not one."""
    rest = text.removeprefix(JETSTREAM_PREFIX)
    stream, sep, subject = rest.partition("/")
    if not sep:
        return f"{text!r}: expected jetstream:STREAM/SUBJECT"
    if not _STREAM_NAME.fullmatch(stream):
        return f"{text!r}: stream name {stream!r} must be letters, digits, '-' or '_'"
    tokens = subject.split(".")
    if (
        len(subject) > MAX_SUBJECT_CHARS
        or "{" in subject
        or "}" in subject
        or not all(map(_SUBJECT_TOKEN.fullmatch, tokens))
    ):
        return (
            f"{text!r}: subject {subject!r} must be dot-separated tokens of printable characters,"
            " without wildcards ('*', '>'), braces or white space"
        )
    return JetStreamTarget(stream, subject)


CertificateNames = tuple[Sequence[str], Sequence[str]]  # (DNS names, IP addresses) of a verified certificate


@dataclass(frozen=True, slots=True)
class Entry:
    """One config line: ``host`` may send ``remote`` to the local file ``local``.

    From the config, ``remote`` may be a glob (``glob``) and ``local`` a
    template. The entry a connection uses is ``resolved()``: its own remote
    path and destination, and the config entry it came from in ``source``.
    """

    host: str
    remote: str
    local: str
    line: int
    glob: bool = False
    source: Entry | None = None

    @property
    def jetstream(self) -> JetStreamTarget | None:
        """The JetStream subject this entry appends to, or None for a file."""
        if not self.local.startswith(JETSTREAM_PREFIX):
            return None
        target = parse_jetstream(self.local)
        return target if isinstance(target, JetStreamTarget) else None

    @property
    def address(self) -> Address | None:
        """The host as an IP address, or None when it is a name or a network."""
        return parse_address(self.host)

    @property
    def network(self) -> Network | None:
        """The host as a network of more than one address, or None."""
        return parse_network(self.host) if "/" in self.host else None

    @property
    def is_name(self) -> bool:
        """Is the host a name, to be resolved by the caller?"""
        return self.address is None and self.network is None

    @property
    def is_template(self) -> bool:
        """Does the local path hold a placeholder (filled per connection)?"""
        return "{" in self.local

    @property
    def defined_as(self) -> tuple[str, str, str]:
        """(host, remote, local) of the config line this entry is or came from."""
        e = self.source or self
        return (e.host, e.remote, e.local)

    def matches_path(self, path: str) -> bool:
        """Does the remote path a client named fall under this entry?"""
        if not self.glob:
            return path == self.remote
        directory, pattern = posixpath.split(self.remote)
        if posixpath.normpath(path) != path or posixpath.dirname(path) != directory:
            return False
        name = posixpath.basename(path)
        return name_problem(name) is None and fnmatch.fnmatchcase(name, pattern)

    def destination_for(self, remote_path: str, host_label: str) -> str | None:
        """The local file for ``remote_path`` from ``host_label``, or None if none may be written."""
        if not self.matches_path(remote_path) or host_label_problem(host_label) is not None:
            return None
        return substitute(self.local, posixpath.basename(remote_path), host_label)

    def resolved(self, remote_path: str, host_label: str) -> Entry | None:
        """The entry one connection uses: its remote path and substituted local file."""
        if not self.glob and not self.is_template:
            return self if remote_path == self.remote else None
        dest = self.destination_for(remote_path, host_label)
        if dest is None:
            return None
        host = host_label if self.network is not None else self.host
        return replace(self, host=host, remote=remote_path, local=dest, glob=False, source=self)


@dataclass(frozen=True, slots=True)
class ConfigError:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def parse_network(text: str) -> Network | None:
    """``text`` as a network ``address/prefix`` without host bits (IPv4-mapped folded), else None."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def certificate_host(dns_names: Iterable[str]) -> str | None:
    """The host a verified certificate proves, for ``{host}``: its first DNS name that is a
    plain host name (lower-cased, no trailing dot; no wildcard, not an address), else None."""
    for raw in dns_names:
        name = raw.lower().rstrip(".")
        if parse_address(name) is None and host_label_problem(name) is None:
            return name
    return None


def own_label(host: str) -> str:
    """``{host}`` for a single-host entry: its address in canonical form, or its name lower-cased."""
    addr = parse_address(host)
    return str(addr) if addr is not None else host.lower().rstrip(".")


# -- remote path globs ----------------------------------------------------------


def literal_of(pattern: str) -> str | None:
    """The one string an fnmatch ``pattern`` matches, if it matches just one (``a[*]`` is ``a*``)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c in "*?":
            return None
        if c != "[":
            out.append(c)
            continue
        j = i  # fnmatch.translate's bracket scan: '!' negates, a leading ']' is a member
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":
            j += 1
        while j < n and pattern[j] != "]":
            j += 1
        if j >= n:
            out.append("[")  # unclosed: a literal '['
            continue
        members = pattern[i:j]
        if len(members) != 1 or members == "!":
            return None
        out.append(members)
        i = j + 1
    literal = "".join(out)
    return literal if fnmatch.fnmatchcase(literal, pattern) else None


# -- parsing ----------------------------------------------------------------------


def _check_path(text: str, what: str) -> str | None:
    if not text:
        return f"missing {what} path"
    if not text.startswith("/"):
        return f"{what} path {text!r} is not absolute"
    if "\0" in text:
        return f"{what} path contains a NUL byte"
    return None


def _parse_host(left: str) -> tuple[str, str] | str:
    """(host, remote) from the part before '|', or a reason; a one-address network is that address."""
    if left.startswith("["):
        close = left.find("]")
        if close < 0 or left[close + 1 : close + 2] != ":":
            return "an IPv6 host is written [address]:/path"
        host, remote = left[1:close], left[close + 2 :]
        if "/" in host:
            net = parse_network(host)
            if not isinstance(net, ipaddress.IPv6Network) and not (net and ":" in host):
                return f"{host!r} in brackets is not an IPv6 network (address/prefix, no host bits set)"
        else:
            addr = parse_address(host)
            if not isinstance(addr, ipaddress.IPv6Address) and not (addr and ":" in host):
                return f"{host!r} in brackets is not an IPv6 address"
    else:
        host, sep, remote = left.partition(":")
        if not sep:
            return "expected <host>:<remote path> before '|'"
        host = host.strip()
        if "/" in host:
            if parse_network(host) is None:
                return f"{host!r} is not a network (address/prefix, no host bits set)"
        elif parse_address(host) is None and not is_host_name(host):
            return f"{host!r} is not a host name or IP address"
    if "/" in host:
        net = parse_network(host)
        assert net is not None
        host = str(net.network_address) if net.num_addresses == 1 else str(net)
    return host, remote.strip()


def _parse_remote(remote: str) -> tuple[str, bool] | str:
    """The normalised remote path and whether it is a glob, or a reason."""
    remote = posixpath.normpath(remote)
    directory, last = posixpath.split(remote)
    if _GLOB_MAGIC.search(directory):
        parts = [literal_of(part) for part in directory.split("/")]
        if any(part is None for part in parts):
            return f"remote path {remote}: a glob ('*', '?', '[') is allowed only in its last component"
        directory = "/".join(part or "" for part in parts)  # escapes ('[*]') only: a literal directory
        remote = posixpath.join(directory, last)
    if not _GLOB_MAGIC.search(last):
        return remote, False
    literal = literal_of(last)
    if literal is not None:
        return posixpath.join(directory, literal), False
    return remote, True


def _parse_local(local: str, host: str, glob: bool) -> str:
    """The normalised local path with a single host's ``{host}`` filled in, or raises ValueError(reason)."""
    raw_keys = placeholder_keys(local)
    local = "/" + posixpath.normpath(local).lstrip("/")
    template = split_template(local)
    if isinstance(template, str):
        raise ValueError(template)
    keys = set(slot_keys(template))
    if sorted(raw_keys) != sorted(slot_keys(template)):
        raise ValueError("a placeholder of the local path is removed by '..'")
    if NAME in keys and not glob:
        raise ValueError("{name} in the local path needs a glob in the last component of the remote path")
    if glob and NAME not in keys:
        raise ValueError(
            f"the remote path is a glob: the local path must use {{name}}, or every matching file would land in {local}"
        )
    net = parse_network(host) if "/" in host else None
    if net is not None and HOST not in keys:
        raise ValueError(f"network {host} has many hosts: the local path must use {{host}}, or all would land in one")
    if net is None and HOST in keys:
        local = local.replace("{host}", own_label(host))  # a single host: known now, it is that host
    return local


def parse_line(text: str) -> Entry | str | None:
    """One line as an Entry, a reason it is wrong, or None for a comment/blank."""
    line = text.strip()
    if not line or line.startswith("#"):
        return None
    if line.count("|") != 1:
        return "expected exactly one '|' between the remote and the local file"
    left, local = (part.strip() for part in line.split("|"))
    parsed = _parse_host(left)
    if isinstance(parsed, str):
        return parsed
    host, remote = parsed
    if local.startswith(JETSTREAM_PREFIX):
        return _parse_jetstream_entry(host, remote, local)
    for path, what in ((remote, "remote"), (local, "local")):
        problem = _check_path(path, what)
        if problem:
            return problem
    remote_glob = _parse_remote(remote)
    if isinstance(remote_glob, str):
        return remote_glob
    remote, glob = remote_glob
    try:
        local = _parse_local(local, host, glob)
    except ValueError as exc:
        return str(exc)
    return Entry(host=host, remote=remote, local=local, line=0, glob=glob)


def _parse_jetstream_entry(host: str, remote: str, local: str) -> Entry | str:
    problem = _check_path(remote, "remote")
    if problem:
        return problem
    target = parse_jetstream(local)
    if isinstance(target, str):
        return target
    remote_glob = _parse_remote(remote)
    if isinstance(remote_glob, str):
        return remote_glob
    remote, glob = remote_glob
    if glob:
        return "a glob entry cannot write a JetStream subject (one subject a file: use a file destination)"
    if "/" in host and (net := parse_network(host)) is not None and net.num_addresses > 1:
        return f"network {host} has many hosts: they cannot share one JetStream subject"
    return Entry(host=host, remote=remote, local=str(target), line=0)


def parse(text: str, path: str) -> tuple[list[Entry], list[ConfigError]]:
    """Every entry of a config file and every problem in it."""
    entries: list[Entry] = []
    errors: list[ConfigError] = []
    seen = OverlapIndex()
    seen_subjects: dict[str, Entry] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        result = parse_line(raw)
        if result is None:
            continue
        if isinstance(result, str):
            errors.append(ConfigError(path, number, result))
            continue
        entry = replace(result, line=number)
        earlier = seen.by_local.get(entry.local)
        if earlier is not None:
            errors.append(
                ConfigError(path, number, f"local file {entry.local} is already written by line {earlier.line}")
            )
            continue
        target = entry.jetstream
        if target is not None:
            other = seen_subjects.get(target.subject)
            if other is not None:
                errors.append(
                    ConfigError(path, number, f"subject {target.subject} is already written by line {other.line}")
                )
                continue
            seen_subjects[target.subject] = entry
            seen.by_local[entry.local] = entry
            entries.append(entry)
            continue
        template = split_template(entry.local)
        assert not isinstance(template, str)  # parse_line checked it
        clash = seen.clash(entry, template)
        if clash is not None:
            errors.append(
                ConfigError(
                    path,
                    number,
                    f"local path {entry.local} could be the same file as line {clash.line}'s {clash.local}:"
                    f" two pipes in one file (also line {clash.line})",
                )
            )
            continue
        seen.add(entry, template)
        entries.append(entry)
    return entries, errors


# -- lookup ---------------------------------------------------------------------------


def candidates(entries: Iterable[Entry], remote: str) -> list[Entry]:
    """Entries for the remote path a client named: literal ones first, then globs, each in file order."""
    listed = list(entries)
    literal = [e for e in listed if not e.glob and e.remote == remote]
    return literal + [e for e in listed if e.glob and e.matches_path(remote)]


def host_matches(entry: Entry, peer: str, resolved: Iterable[str] = ()) -> bool:
    """Does the connection's source address ``peer`` match the entry's host?

    ``resolved`` holds the addresses the entry's host name resolves to (empty
    for an IP or network entry); the caller resolves, this function only compares.
    """
    peer_addr = parse_address(peer)
    if peer_addr is None:
        return False
    own = entry.address
    if own is not None:
        return own == peer_addr
    net = entry.network
    if net is not None:
        return peer_addr in net
    return any(parse_address(a) == peer_addr for a in resolved)


def host_matches_certificate(entry: Entry, dns_names: Iterable[str], ip_addresses: Iterable[str]) -> bool:
    """Is the entry's host named in the client certificate's subjectAltName?

    An IP entry matches an IP SAN; a name entry matches a DNS SAN (case and a
    trailing dot ignored). Wildcards are not honoured: an archive decides per host.
    A network entry is no single host: ``admit`` matches it by source address.
    """
    own = entry.address
    if own is not None:
        return any(parse_address(ip) == own for ip in ip_addresses)
    if entry.network is not None:
        return False
    want = entry.host.lower().rstrip(".")
    return any(name.lower().rstrip(".") == want for name in dns_names)


def admit(
    entry: Entry, path: str, peer: str, names: CertificateNames | None = None, resolved: Iterable[str] = ()
) -> Entry | None:
    """The entry a connection from ``peer`` sending ``path`` uses, or None if ``entry`` is not for it.

    ``names`` are the verified client certificate's (DNS, IP) names when one is
    required: they, not the address, say who the peer is. A network entry then
    needs both: the source address in the network, and a host name the
    certificate proves, which becomes ``{host}``.
    """
    if not entry.matches_path(path):
        return None
    if entry.network is not None:
        if not host_matches(entry, peer):
            return None
        label = str(parse_address(peer)) if names is None else certificate_host(names[0])
    elif names is not None:
        label = own_label(entry.host) if host_matches_certificate(entry, *names) else None
    else:
        label = own_label(entry.host) if host_matches(entry, peer, resolved) else None
    return None if label is None else entry.resolved(path, label)
