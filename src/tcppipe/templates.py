"""Destination templates: what a config entry's local path may hold, and what it can become.

Rule 1: pure. Strings in, strings out; no file is read or written and no name
is resolved here. Entries come from ``config.py``; this module knows of them
only the few attributes ``Placed`` names, and never imports ``config``.

Rule 2 (placeholders): a local path may hold ``{name}`` (the base name of the
file a glob matched) and ``{host}`` (an address in canonical form, or a
lower-case host name). Each placeholder fills a whole value into one path
component (at most one placeholder a component, each at most once), so a
destination names its values back. Which values an entry may use is
``config.py``'s business; what a value may look like is decided here, which is
why the address parser lives in this module.

Rule 3 (where bytes may go): every local path an entry can produce lies
inside the directory its template names before its first placeholder, and
no two pipes can land in one file. ``substitute`` returns None rather than a
path outside that directory, not normal, or holding NUL. An entry whose
values are not all in its local path (a glob without ``{name}``, a network
without ``{host}``) could put two pipes in one file, and ``config.py`` refuses
it. Two entries are an error when their local paths could be one file at
all, judged component by component: two literals differ, a literal fits a
placeholder only if the value it would need is one the entry can produce,
and two placeholders are assumed to overlap unless their literal prefixes or
suffixes differ. Conservative by design: such a pair is refused even when
only one pipe could reach it. ``OverlapIndex`` finds exactly the clashes that
comparing every pair would find, comparing a new entry only with candidates.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# RFC 1123 labels; a trailing dot (a rooted name) is accepted.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_PLACEHOLDER = re.compile(r"\{([^{}/]*)\}")
NAME, HOST = "name", "host"
PLACEHOLDERS = (NAME, HOST)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Slot:
    """A placeholder in one component of a local path: ``pre{key}suf``."""

    pre: str
    key: str
    suf: str

    def fill(self, value: str) -> str:
        return f"{self.pre}{value}{self.suf}"


Component = str | Slot


class Placed(Protocol):
    """What the overlap check needs of a config entry (``config.Entry`` is one)."""

    @property
    def remote(self) -> str: ...  # its last component is the glob {name} values match

    @property
    def local(self) -> str: ...

    @property
    def line(self) -> int: ...

    @property
    def network(self) -> Network | None: ...  # the addresses {host} may be, for a network entry

    @property
    def is_template(self) -> bool: ...


# -- placeholder values -----------------------------------------------------------


def is_host_name(text: str) -> bool:
    """Is ``text`` a host name by RFC 1123 (any case, a trailing dot allowed)?"""
    return bool(_HOSTNAME.match(text))


def parse_address(text: str) -> Address | None:
    """``text`` as an IP address (IPv4-mapped IPv6 folded to IPv4), else None."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a ``{name}`` value, or None if it can."""
    if name in ("", ".", ".."):
        return f"file name {name!r} is not a name"
    if "/" in name or "\0" in name:
        return "file name holds '/' or NUL"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "file name holds a control character"
    try:
        name.encode()
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    return None


def host_label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a ``{host}`` value (an address or a host name), or None."""
    if parse_address(label) is not None:
        return None if str(parse_address(label)) == label else f"address {label!r} is not in canonical form"
    if label in ("", ".", "..") or "/" in label or not _HOSTNAME.match(label) or label != label.lower().rstrip("."):
        return f"{label!r} is not a lower-case host name"
    return None


# -- template syntax and substitution ---------------------------------------------


def placeholder_keys(text: str) -> list[str]:
    """The key of every ``{...}`` in ``text`` as written, in order (known or not)."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(text)]


def split_template(local: str) -> tuple[Component, ...] | str:
    """A normalised absolute local path as components, or why it is not a valid template."""
    seen: set[str] = set()
    components: list[Component] = []
    for part in local.split("/")[1:]:
        found = list(_PLACEHOLDER.finditer(part))
        rest = _PLACEHOLDER.sub("", part)
        if "{" in rest or "}" in rest:
            return "a '{' or '}' in the local path that is not {name} or {host}"
        if len(found) > 1:
            return f"path component {part!r} holds more than one placeholder"
        if not found:
            components.append(part)
            continue
        key = found[0].group(1)
        if key not in PLACEHOLDERS:
            return f"unknown placeholder {{{key}}} in the local path (only {{name}} and {{host}})"
        if key in seen:
            return f"{{{key}}} is used more than once in the local path"
        seen.add(key)
        components.append(Slot(part[: found[0].start()], key, part[found[0].end() :]))
    return tuple(components)


def slot_keys(template: Sequence[Component]) -> list[str]:
    """The placeholders a template holds, in order."""
    return [c.key for c in template if isinstance(c, Slot)]


def template_base(template: Sequence[Component]) -> str:
    """The directory a template names before its first placeholder."""
    head: list[str] = []
    for c in template:
        if not isinstance(c, str):
            break
        head.append(c)
    else:
        head = head[:-1]
    return "/" + "/".join(head)


def substitute(local: str, name: str, host: str) -> str | None:
    """The file ``local`` names with ``{name}`` and ``{host}`` filled in, or None if it may not be written
    (Rule 3). The caller has checked the values."""
    template = split_template(local)
    if isinstance(template, str):
        return None
    values = {NAME: name, HOST: host}
    parts = [c if isinstance(c, str) else c.fill(values[c.key]) for c in template]
    dest = "/" + "/".join(parts)
    base = template_base(template)
    inside = dest.startswith(base if base == "/" else base + "/")
    if posixpath.normpath(dest) != dest or not inside or "\0" in dest:
        return None
    return dest


# -- two pipes, one file ------------------------------------------------------------


def _can_be(text: str, slot: Slot, entry: Placed) -> bool:
    """Could ``slot`` of ``entry`` produce the component ``text``?"""
    if len(text) <= len(slot.pre) + len(slot.suf) or not text.startswith(slot.pre) or not text.endswith(slot.suf):
        return False
    value = text[len(slot.pre) : len(text) - len(slot.suf)]
    if slot.key == NAME:
        return name_problem(value) is None and fnmatch.fnmatchcase(value, posixpath.basename(entry.remote))
    # {host} of a network entry: any address in it, or (with client certificates) any host name.
    net, addr = entry.network, parse_address(value)
    if addr is not None:
        return str(addr) == value and net is not None and addr in net
    return host_label_problem(value) is None


def _may_meet(a: Component, ea: Placed, b: Component, eb: Placed) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, str):
        assert isinstance(b, Slot)
        return _can_be(a, b, eb)
    if isinstance(b, str):
        return _can_be(b, a, ea)
    # Two placeholders: assumed to meet unless their fixed ends tell them apart.
    pre_ok = a.pre.startswith(b.pre) or b.pre.startswith(a.pre)
    suf_ok = a.suf.endswith(b.suf) or b.suf.endswith(a.suf)
    return pre_ok and suf_ok


def could_share_a_file(a: Placed, b: Placed) -> bool:
    """Could the local paths of entries ``a`` and ``b`` ever be one file? (Rule 3, conservative.)"""
    ta, tb = split_template(a.local), split_template(b.local)
    if isinstance(ta, str) or isinstance(tb, str):
        return False
    return _templates_meet(a, ta, b, tb)


def _templates_meet(a: Placed, ta: Sequence[Component], b: Placed, tb: Sequence[Component]) -> bool:
    return len(ta) == len(tb) and all(_may_meet(x, a, y, b) for x, y in zip(ta, tb, strict=True))


class OverlapIndex:
    """The entries accepted so far, indexed so that a new one is compared only with those that
    could meet it: same depth, and fixed leading components that agree (a template's leading
    literals, its base, must be a prefix of the other's path or base, or the other way round)."""

    def __init__(self) -> None:
        self.by_local: dict[str, Placed] = {}  # literal local paths
        self.literal_prefix: dict[tuple[int, tuple[str, ...]], list[Placed]] = {}  # literals, by every prefix
        self.template_base: dict[tuple[int, tuple[str, ...]], list[Placed]] = {}  # templates, by their base
        self.template_prefix: dict[tuple[int, tuple[str, ...]], list[Placed]] = {}  # templates, by every base prefix
        self.templates: dict[int, tuple[Component, ...]] = {}  # id(entry) -> its template

    @staticmethod
    def _head(template: Sequence[Component]) -> tuple[str, ...]:
        head: list[str] = []
        for c in template:
            if not isinstance(c, str):
                break
            head.append(c)
        return tuple(head)

    def clash(self, entry: Placed, template: tuple[Component, ...]) -> Placed | None:
        """The first earlier entry whose local path could be a file ``entry`` writes, if any."""
        n, head = len(template), self._head(template)
        found: list[Placed] = []
        if entry.is_template:
            found += self.literal_prefix.get((n, head), [])
            found += self.template_prefix.get((n, head), [])
            for k in range(len(head)):
                found += self.template_base.get((n, head[:k]), [])
        else:
            for k in range(n):
                found += self.template_base.get((n, head[:k]), [])
        for other in sorted(found, key=lambda e: e.line):
            if _templates_meet(entry, template, other, self.templates[id(other)]):
                return other
        return None

    def add(self, entry: Placed, template: tuple[Component, ...]) -> None:
        """Index ``entry``, whose local path is ``template``, for the entries that follow."""
        n, head = len(template), self._head(template)
        self.templates[id(entry)] = template
        if not entry.is_template:
            self.by_local[entry.local] = entry
            for k in range(n + 1):
                self.literal_prefix.setdefault((n, head[:k]), []).append(entry)
            return
        self.template_base.setdefault((n, head), []).append(entry)
        for k in range(len(head) + 1):
            self.template_prefix.setdefault((n, head[:k]), []).append(entry)
