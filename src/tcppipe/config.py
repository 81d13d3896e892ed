"""The server's pipe definitions: parse /etc/tcppipe.conf and look entries up.

Rule 1: pure. Parsing takes text, lookup takes addresses already resolved; no
file is read and no name is resolved here (``server.py`` does both).

Rule 2: errors are collected, never raised one at a time, so ``--check``,
start-up and reload report every problem, each as ``FILE:LINE: reason``.

Format, one entry a line (``#`` lines and blank lines ignored)::

    <hostname or IP address>:<absolute remote path> | <absolute local path>

IPv6 literals are bracketed: ``[::1]:/var/log/x | /srv/x``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

# RFC 1123 labels; a trailing dot (a rooted name) is accepted.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One pipe: ``host`` may send ``remote`` to the local file ``local``."""

    host: str
    remote: str
    local: str
    line: int

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address, or None when it is a name to resolve."""
        return parse_address(self.host)


@dataclass(frozen=True, slots=True)
class ConfigError:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (IPv4-mapped IPv6 folded to IPv4), else None."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _check_path(text: str, what: str) -> str | None:
    if not text:
        return f"missing {what} path"
    if not text.startswith("/"):
        return f"{what} path {text!r} is not absolute"
    if "\0" in text:
        return f"{what} path contains a NUL byte"
    return None


def parse_line(text: str) -> Entry | str | None:
    """One line as an Entry, a reason it is wrong, or None for a comment/blank."""
    line = text.strip()
    if not line or line.startswith("#"):
        return None
    if line.count("|") != 1:
        return "expected exactly one '|' between the remote and the local file"
    left, local = (part.strip() for part in line.split("|"))
    if left.startswith("["):
        close = left.find("]")
        if close < 0 or left[close + 1 : close + 2] != ":":
            return "an IPv6 host is written [address]:/path"
        host, remote = left[1:close], left[close + 2 :]
        addr = parse_address(host)
        if not isinstance(addr, ipaddress.IPv6Address) and not (addr and ":" in host):
            return f"{host!r} in brackets is not an IPv6 address"
    else:
        host, sep, remote = left.partition(":")
        if not sep:
            return "expected <host>:<remote path> before '|'"
        host = host.strip()
        if parse_address(host) is None and not _HOSTNAME.match(host):
            return f"{host!r} is not a host name or IP address"
    remote = remote.strip()
    for path, what in ((remote, "remote"), (local, "local")):
        problem = _check_path(path, what)
        if problem:
            return problem
    return Entry(host=host, remote=posixpath.normpath(remote), local=posixpath.normpath(local), line=0)


def parse(text: str, path: str) -> tuple[list[Entry], list[ConfigError]]:
    """Every entry of a config file and every problem in it."""
    entries: list[Entry] = []
    errors: list[ConfigError] = []
    by_local: dict[str, Entry] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        result = parse_line(raw)
        if result is None:
            continue
        if isinstance(result, str):
            errors.append(ConfigError(path, number, result))
            continue
        entry = Entry(result.host, result.remote, result.local, number)
        earlier = by_local.get(entry.local)
        if earlier is not None:
            errors.append(
                ConfigError(path, number, f"local file {entry.local} is already written by line {earlier.line}")
            )
            continue
        by_local[entry.local] = entry
        entries.append(entry)
    return entries, errors


def candidates(entries: Iterable[Entry], remote: str) -> list[Entry]:
    """Entries for the remote path a client named, in file order."""
    return [e for e in entries if e.remote == remote]


def host_matches(entry: Entry, peer: str, resolved: Iterable[str] = ()) -> bool:
    """Does the connection's source address ``peer`` match the entry's host?

    ``resolved`` holds the addresses the entry's host name resolves to (empty
    for an IP entry); the caller resolves, this function only compares.
    """
    peer_addr = parse_address(peer)
    if peer_addr is None:
        return False
    own = entry.address
    if own is not None:
        return own == peer_addr
    return any(parse_address(a) == peer_addr for a in resolved)


def host_matches_certificate(entry: Entry, dns_names: Iterable[str], ip_addresses: Iterable[str]) -> bool:
    """Is the entry's host named in the client certificate's subjectAltName?

    An IP entry matches an IP SAN; a name entry matches a DNS SAN (case and a
    trailing dot ignored). Wildcards are not honoured: an archive decides per host.
    """
    own = entry.address
    if own is not None:
        return any(parse_address(ip) == own for ip in ip_addresses)
    want = entry.host.lower().rstrip(".")
    return any(name.lower().rstrip(".") == want for name in dns_names)
