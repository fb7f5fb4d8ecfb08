"""Domain and organisation entries of endpoint lists: their checks (located problems) and a
most-specific-first name index.

A pattern is an exact host name (`vpn.example.com`: that name only) or a wildcard (`*.example.com`:
example.com itself and every name below it). Names are compared lowercase without a trailing dot.
Lookup walks the name's own suffixes, longest first: one dict probe per label, so the cost grows with
the name's label count (at most 127), never with the number of entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

from yaml.nodes import Node

from tunnelwatch.config.yamlcheck import YamlReader

T = TypeVar("T")
_LABEL: Final = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
MAX_DOMAIN: Final = 253


def check_domain(text: str) -> tuple[str, bool] | str:
    """(name, is_wildcard) for a valid pattern, else a message saying what is wrong with it."""
    s = text.strip().lower().rstrip(".")
    wild = s.startswith("*.")
    name = s[2:] if wild else s
    if "*" in name:
        return "a wildcard may only be a leading '*.' (e.g. *.example.com)"
    if not name or len(name) > MAX_DOMAIN:
        return "not a domain name (e.g. vpn.example.com or *.example.com)"
    labels = name.split(".")
    bad = next((lb for lb in labels if not _LABEL.match(lb)), None)
    if bad is not None:
        return f"label {bad!r} is not a valid DNS label (letters, digits, '-', 1-63 characters)"
    if len(labels) < 2:
        return f"{name!r} is a top-level domain alone; name a registered domain (e.g. *.{name}.example)"
    if all(lb.isdigit() for lb in labels):
        return "an IP address is an `address:` entry, not a domain"
    return name, wild


def domain_field(r: YamlReader, node: Node) -> tuple[str, bool] | None:
    """The `domain:` of an entry, checked; a problem is recorded at the node."""
    text = r.string(node, "domain")
    if text is None:
        return None
    checked = check_domain(text)
    if isinstance(checked, str):
        r.err(node, f"domain {text!r}: {checked}")
        return None
    return checked


def organisation_field(r: YamlReader, node: Node) -> str:
    """The `organisation:` of an entry (a server certificate's subject O=), or "" after a problem."""
    text = r.string(node, "organisation")
    if text is None:
        return ""  # r.string said what is wrong
    org = text.strip()
    if not org or len(org) > 128:
        r.err(node, "organisation must be 1-128 characters: a server certificate's subject O=")
        return ""
    return org


class DomainIndex(Generic[T]):
    """Exact names and wildcard suffixes, each mapping to the targets listed for it."""

    __slots__ = ("count", "exact", "suffix")

    def __init__(self) -> None:
        self.exact: dict[str, list[T]] = {}
        self.suffix: dict[str, list[T]] = {}
        self.count = 0

    def add(self, name: str, wildcard: bool, target: T) -> None:
        """Index one checked pattern (see check_domain)."""
        (self.suffix if wildcard else self.exact).setdefault(name, []).append(target)
        self.count += 1

    def candidates(self, name: str) -> Iterator[tuple[str, T]]:
        """(pattern, target) for every entry covering name, most specific first."""
        if not self.count:
            return
        hit = self.exact.get(name)
        if hit:
            for t in hit:
                yield name, t
        if not self.suffix:
            return
        s = name
        for _ in range(128):  # at most 127 labels in a name
            hit = self.suffix.get(s)
            if hit:
                for t in hit:
                    yield "*." + s, t
            dot = s.find(".")
            if dot < 0:
                return
            s = s[dot + 1:]
