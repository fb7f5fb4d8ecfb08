"""Endpoint intelligence: operator-supplied lists of known VPN provider, Tor relay and proxy addresses
and domains.

Owns the list file formats (a YAML list with provider/klass/protocol and CIDR or domain entries (matched
against the flow's name: TLS SNI, QUIC SNI or DNS-learned, see names.py), or a plain text
file of one address or CIDR per line whose labels come from the config), their strict loading with
`file:line:col` problems, the `endpoints:` config section, a fast per-prefix-length index and the live,
hot-reloadable set the daemon holds. A match is only ever a "list" verdict: the address is on a list,
nothing about the traffic was seen (docs/endpoints.md). A bad file on reload keeps its last good version.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from yaml.nodes import MappingNode, Node

from tunnelwatch.classify.base import NAME_RE
from tunnelwatch.classify.domains import DomainIndex, domain_field, organisation_field
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import ICMP, ICMPV6, TCP, UDP, addr_text
from tunnelwatch.config.yamlcheck import ConfigError, YamlReader, kind, relative_path
from tunnelwatch.verdict import FLAGGED_ORDER, Klass, Verdict

log = logging.getLogger(__name__)

LIST_KLASSES: Final = FLAGGED_ORDER
TRANSPORTS: Final = {"any": 0, "tcp": TCP, "udp": UDP}
FORMATS: Final = ("yaml", "text")
MAX_BYTES: Final = 64 * 1024 * 1024  # a list bigger than this is a mistake (or an attack on the box)
_TOP: Final = ("name", "provider", "klass", "protocol", "description", "entries")
_ENTRY: Final = ("address", "domain", "organisation", "ports", "transport", "protocol", "provider", "klass",
                 "source")
_LABELS: Final = ("provider", "klass", "protocol")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ListSource:
    """One list file named in the config; text lists take provider/klass/protocol from here."""

    path: Path
    format: str = "yaml"
    provider: str | None = None
    klass: str | None = None
    protocol: str | None = None


@dataclass(frozen=True)
class EndpointsConfig:
    """The `endpoints:` section: list files and how often to look for changed files (0 = only on reload)."""

    lists: tuple[ListSource, ...] = ()
    watch: int = 30


@dataclass(frozen=True)
class Entry:
    """One block of addresses (or one domain pattern), optionally limited to ports and a transport (0 = any);
    provider/klass/protocol, when set, override the list's for this entry."""

    net: Network | None
    ports: frozenset[int] = frozenset()
    transport: int = 0
    protocol: str = ""
    #: a domain entry: the name (without "*.") and whether it covers the names below it
    domain: str = ""
    wildcard: bool = False
    provider: str = ""
    klass: str = ""
    #: an organisation entry: the subject O= of a server certificate (compared case-insensitively)
    organisation: str = ""


@dataclass(frozen=True)
class EndpointList:
    """A loaded list: who it describes, what a match means, its entries."""

    name: str
    provider: str
    klass: Klass
    protocol: str
    entries: tuple[Entry, ...]


def endpoints_section(r: YamlReader, node: Node, path: str) -> EndpointsConfig:
    """Parse the `endpoints:` section of tunnelwatch.yaml (paths relative to the file that names them)."""
    f = r.mapping(node, ("lists", "watch"), "endpoints")
    sources: list[ListSource] = []
    for item in r.seq(f["lists"], "endpoints.lists") if "lists" in f else []:
        src = _source(r, item, path)
        if src is not None:
            if any(s.path == src.path for s in sources):
                r.err(item, f"endpoints.lists: {src.path} is listed twice; keep one")
            sources.append(src)
    watch = r.opt(f, "watch", lambda n: r.integer(n, "endpoints.watch", 0, 86_400), 30)
    return EndpointsConfig(tuple(sources), watch)


def _source(r: YamlReader, node: Node, path: str) -> ListSource | None:
    if not isinstance(node, MappingNode):
        s = r.string(node, "endpoints.lists item")
        if s is None:
            return None
        node_fields: dict[str, Node] = {"path": node}
    else:
        node_fields = r.mapping(node, ("path", "format", *_LABELS), "endpoints.lists item")
    if "path" not in node_fields:
        r.err(node, "endpoints.lists item needs path: FILE")
        return None
    text = r.string(node_fields["path"], "endpoints.lists path")
    if text is None:
        return None
    p = relative_path(node_fields["path"], text, path)
    guess = "yaml" if p.suffix in (".yaml", ".yml") else "text"
    fmt = r.opt(node_fields, "format", lambda n: r.string(n, "endpoints.lists format", FORMATS), guess)
    labels: dict[str, str | None] = {}
    for k in _LABELS:
        labels[k] = r.string(node_fields[k], f"endpoints.lists {k}") if k in node_fields else None
    if fmt == "text":
        for k in ("provider", "klass", "protocol"):
            if labels[k] is None and k not in node_fields:
                r.err(node, f"text list {text}: needs {k}: in the config (a text list holds only addresses)")
        if labels["klass"] is not None and labels["klass"] not in LIST_KLASSES:
            r.err(node_fields["klass"], f"klass must be one of {', '.join(LIST_KLASSES)}")
        if labels["protocol"] is not None and not NAME_RE.match(labels["protocol"]):
            r.err(node_fields["protocol"], f"protocol must match {NAME_RE.pattern}, e.g. tor, openvpn")
    else:
        for k in ("provider", "klass", "protocol"):
            if k in node_fields:
                r.err(node_fields[k], f"{k} of a YAML list is set inside the list file, not here")
    return ListSource(p, fmt, labels["provider"], labels["klass"], labels["protocol"])


def _net(r: YamlReader, node: Node, text: object) -> Network | None:
    try:
        return ipaddress.ip_network(str(text), strict=True) if isinstance(text, str) else None
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(str(text), strict=False)
            r.err(node, f"{text!r} has host bits set; did you mean {fixed}?")
            return None
    r.err(node, f"not an IP address or CIDR block: {kind(node)} (e.g. 192.0.2.0/24, 2001:db8::/32)")
    return None


def _entry(r: YamlReader, node: Node) -> Entry | None:
    if not isinstance(node, MappingNode):
        bare = _net(r, node, r.value(node))
        return Entry(bare) if bare is not None else None
    f = r.mapping(node, _ENTRY, "entry")
    if sum(k in f for k in ("address", "domain", "organisation")) != 1:
        r.err(node, "entry needs address: IP or CIDR, or domain: NAME or \"*.SUFFIX\", or organisation: "
                    "CERTIFICATE O= (one of them)")
        return None
    net: Network | None = None
    domain: tuple[str, bool] | None = None
    org = ""
    if "address" in f:
        net = _net(r, f["address"], r.value(f["address"]))
    elif "domain" in f:
        domain = domain_field(r, f["domain"])
    else:
        org = organisation_field(r, f["organisation"])
    ports = [r.integer(n, "port", 1, 65535) for n in r.seq(f["ports"], "ports")] if "ports" in f else []
    tr = r.opt(f, "transport", lambda n: r.string(n, "transport", tuple(TRANSPORTS)), "any")
    proto = r.opt(f, "protocol", lambda n: r.string(n, "entry protocol"), "")
    if proto and not NAME_RE.match(proto):
        r.err(f["protocol"], f"protocol must match {NAME_RE.pattern}")
    provider = r.opt(f, "provider", lambda n: r.string(n, "entry provider"), "")
    klass = r.opt(f, "klass", lambda n: r.string(n, "entry klass", LIST_KLASSES), "")
    r.opt(f, "source", lambda n: r.string(n, "entry source"), "")  # where the facts come from: for people
    if (net is None and domain is None and not org) or None in ports:
        return None
    return Entry(net, frozenset(p for p in ports if p is not None), TRANSPORTS[tr], proto,
                 domain[0] if domain else "", domain[1] if domain else False, provider or "", klass or "",
                 org)


def parse_yaml_list(text: str, path: str) -> EndpointList:
    """Parse a YAML endpoint list; raise ConfigError listing every problem."""
    r = YamlReader(path)
    root = r.load(text)
    if root is None:
        raise ConfigError(r.problems or [f"{path}:1:1: empty list file; see docs/endpoints.md"])
    f = r.mapping(root, _TOP, "the endpoint list")
    for need in ("provider", "klass", "protocol", "entries"):
        if need not in f and isinstance(root, MappingNode):
            r.err(root, f"the endpoint list needs {need}:")
    provider = r.opt(f, "provider", lambda n: r.string(n, "provider"), "")
    klass = r.opt(f, "klass", lambda n: r.string(n, "klass", LIST_KLASSES), "vpn_tunnel")
    protocol = r.opt(f, "protocol", lambda n: r.string(n, "protocol"), "listed")
    if "protocol" in f and not NAME_RE.match(protocol):
        r.err(f["protocol"], f"protocol must match {NAME_RE.pattern}, e.g. openvpn, wireguard, tor")
    name = r.opt(f, "name", lambda n: r.string(n, "name"), Path(path).stem)
    r.opt(f, "description", lambda n: r.string(n, "description"), "")
    entries = [_entry(r, n) for n in r.seq(f["entries"], "entries")] if "entries" in f else []
    if r.problems:
        raise ConfigError(r.problems)
    kept = tuple(e for e in entries if e is not None)
    return EndpointList(name, provider, cast(Klass, klass), protocol, kept)


def parse_text_list(text: str, src: ListSource) -> EndpointList:
    """Parse a text list (one address or CIDR per line, # comments); raise ConfigError on any bad line."""
    problems: list[str] = []
    entries: list[Entry] = []
    for no, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if not token:
            continue
        col = line.index(token[0]) + 1
        try:
            entries.append(Entry(_fast_net(token) or ipaddress.ip_network(token, strict=True)))
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):
                hint = f"; did you mean {ipaddress.ip_network(token, strict=False)}?"
            shown = token if len(token) <= 40 else token[:37] + "..."
            problems.append(f"{src.path}:{no}:{col}: not an IP address or CIDR block: {shown!r}{hint}")
            if len(problems) >= 50:  # a wrong file (not a list at all): fifty lines say enough
                problems.append(f"{src.path}:{no}:1: stopping after 50 problems")
                break
    if problems:
        raise ConfigError(problems)
    klass = cast(Klass, src.klass if src.klass in LIST_KLASSES else "vpn_tunnel")
    return EndpointList(src.path.stem, src.provider or "", klass, src.protocol or "listed", tuple(entries))


def _fast_net(token: str) -> Network | None:
    """A bare address via inet_pton: twice as fast as ipaddress's parser on big relay exports."""
    if "/" in token:
        return None
    try:
        if ":" in token:
            return ipaddress.IPv6Network((int.from_bytes(socket.inet_pton(socket.AF_INET6, token)), 128))
        return ipaddress.IPv4Network((int.from_bytes(socket.inet_pton(socket.AF_INET, token)), 32))
    except OSError:
        return None  # let ipaddress say what is wrong with it


def load_list(src: ListSource) -> EndpointList:
    """Read and parse one list file; unreadable or oversized files are ConfigErrors too."""
    try:
        if src.path.stat().st_size > MAX_BYTES:
            raise ConfigError([f"{src.path}:1:1: larger than {MAX_BYTES // 1048576} MiB; split the list"])
        text = src.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{src.path}:1:1: cannot read: {exc}"]) from exc
    return parse_yaml_list(text, str(src.path)) if src.format == "yaml" else parse_text_list(text, src)


#: (ports, transport, protocol, list, entry, provider): what an index lookup finds
Target = tuple[frozenset[int], int, str, EndpointList, Entry, str]
#: how a flow's name was seen (names.py), as evidence says it
_HOW: Final = {"sni": "TLS SNI", "quic-sni": "QUIC SNI", "dns": "learned from DNS",
               "cert-org": "server certificate organisation"}


class EndpointIndex:
    """Longest-prefix lookup: per address family, one dict per prefix length present, longest first."""

    def __init__(self, lists: list[EndpointList]) -> None:
        self.count = sum(len(lst.entries) for lst in lists)
        self.domains: DomainIndex[Target] = DomainIndex()
        self.orgs: dict[str, list[Target]] = {}
        tables: dict[tuple[int, int], dict[int, list[Target]]] = {}
        for lst in lists:
            for e in lst.entries:
                target = (e.ports, e.transport, e.protocol or lst.protocol, lst, e,
                          e.provider or lst.provider)
                if e.organisation:
                    self.orgs.setdefault(e.organisation.casefold(), []).append(target)
                    continue
                if e.net is None:
                    self.domains.add(e.domain, e.wildcard, target)
                    continue
                fam = e.net.version
                t = tables.setdefault((fam, e.net.prefixlen), {})
                t.setdefault(int(e.net.network_address), []).append(target)
        self._fam: dict[int, tuple[tuple[int, dict[int, list[Target]]], ...]] = {}
        for fam, bits in ((4, 32), (6, 128)):
            lens = sorted((plen for f, plen in tables if f == fam), reverse=True)
            # a mask per length, so a lookup is one AND and one dict probe per length present
            self._fam[bits // 8] = tuple(
                (((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1), tables[(fam, plen)]) for plen in lens)

    def lookup(self, addr: bytes, port: int, proto: int) -> Target | None:
        """The most specific entry covering addr whose ports and transport fit, if any."""
        levels = self._fam.get(len(addr))
        if not levels:
            return None
        a = int.from_bytes(addr, "big")
        for mask, table in levels:
            targets = table.get(a & mask)
            if targets is not None:
                for t in targets:
                    if (not t[0] or port in t[0]) and (not t[1] or t[1] == proto):
                        return t
        return None

    def match(self, flow: Flow) -> Verdict | None:
        """A "list" verdict when the flow's responder (or, for a capture started mid-flow, its initiator)
        is on a list. ICMP never matches: a ping to a provider's server is not a tunnel."""
        if flow.proto in (ICMP, ICMPV6):
            return None
        for addr, port in ((flow.dst, flow.dport), (flow.src, flow.sport)):
            t = self.lookup(addr, port, flow.proto)
            if t is not None:
                _, _, protocol, lst, e, provider = t
                who = f" ({provider})" if provider else ""
                return Verdict(cast(Klass, e.klass or lst.klass), protocol, "list",
                               (f"{addr_text(addr)} is on endpoint list {lst.name}{who}, entry {e.net}",))
        if flow.name is not None and (self.domains.count or self.orgs):
            return self._name_match(flow, *flow.name)
        return None

    def _name_match(self, flow: Flow, name: str, how: str) -> Verdict | None:
        """A "list" verdict when the flow's host name (SNI, QUIC SNI, DNS-learned) or its server
        certificate's organisation is on a list."""
        port = flow.dport
        found = ((f"organisation {name}", t) for t in self.orgs.get(name.casefold(), ())) \
            if how == "cert-org" else self.domains.candidates(name)
        for pattern, t in found:
            if (not t[0] or port in t[0]) and (not t[1] or t[1] == flow.proto):
                _, _, protocol, lst, e, provider = t
                who = f" ({provider})" if provider else ""
                return Verdict(cast(Klass, e.klass or lst.klass), protocol, "list",
                               (f"{name} ({_HOW.get(how, how)}) is on endpoint list {lst.name}{who}, "
                                f"entry {pattern}",))
        return None


class Endpoints:
    """The live lists of a daemon: loaded at start, re-read on reload, watched by mtime; per file, a bad
    version never replaces the last good one."""

    def __init__(self, cfg: EndpointsConfig, *, strict: bool = False) -> None:
        self.cfg = cfg
        self.lists: dict[Path, EndpointList] = {}
        self.mtimes: dict[Path, tuple[int, int]] = {}
        self.index = EndpointIndex([])
        # strict (start-up): the caller reports the problems and the summary once logging is set up
        problems = self._read(cfg.lists, quiet=strict)
        if problems and strict:
            raise ConfigError(problems)

    def summary(self) -> str:
        """One line for the log: entries and lists in use."""
        return f"endpoints: {self.index.count} entries from {len(self.cfg.lists)} list(s)"

    def _read(self, sources: tuple[ListSource, ...], *, quiet: bool = False) -> list[str]:
        problems: list[str] = []
        for src in sources:
            self.mtimes[src.path] = _mtime(src.path)
            try:
                self.lists[src.path] = load_list(src)
            except ConfigError as exc:
                problems += exc.problems
                if quiet:
                    continue
                for p in exc.problems:
                    log.error("endpoints: %s", p)
                kept = self.lists.get(src.path)
                what = f"the last good list ({len(kept.entries)} entries)" if kept else "no list (none yet)"
                log.error("endpoints: %s: keeping %s", src.path, what)
        self.index = EndpointIndex([self.lists[s.path] for s in self.cfg.lists if s.path in self.lists])
        if sources and not quiet:
            log.info("%s", self.summary())
        return problems

    def reload(self, cfg: EndpointsConfig | None = None) -> list[str]:
        """Re-read every list (SIGHUP), with a new config section if given; returns the problems."""
        if cfg is not None and cfg != self.cfg:
            keep = {s.path for s in cfg.lists}
            self.lists = {p: v for p, v in self.lists.items() if p in keep}
            self.cfg = cfg
        return self._read(self.cfg.lists)

    def check(self) -> bool:
        """Re-read the lists whose file changed since the last read; True when something was re-read."""
        changed = tuple(s for s in self.cfg.lists if _mtime(s.path) != self.mtimes.get(s.path))
        if changed:
            self._read(changed)
        return bool(changed)


def _mtime(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, -1)
    return (st.st_mtime_ns, st.st_size)  # size too: a rewrite within the mtime granularity still counts
