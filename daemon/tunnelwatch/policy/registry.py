"""The registry of registered VPNs: who may run which tunnel to which servers, and when.

Loaded from a YAML file (the signed, synced version arrives with the reporting issue). A bad file is
reported with located messages; `Registry.reload` keeps the last good entries so a broken sync never
turns registered customers into blocked ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from yaml.nodes import Node

from tunnelwatch.classify import known_protocols, suggest_protocol
from tunnelwatch.classify.flow import Flow
from tunnelwatch.config.runconfig import ConfigError, YamlReader

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Server:
    """A server endpoint: an address block and optionally its ports (empty = any port)."""

    net: Network
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Entry:
    """One registration."""

    id: str
    customer: str
    protocols: tuple[str, ...]
    servers: tuple[Server, ...]
    lan_hosts: tuple[Network, ...] = ()
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None

    def valid(self, now: dt.datetime) -> bool:
        """True inside the validity window."""
        return (self.valid_from is None or now >= self.valid_from) and (
            self.valid_until is None or now < self.valid_until)


def _net(r: YamlReader, node: Node, what: str) -> Network | None:
    s = r.value(node)
    try:
        return ipaddress.ip_network(str(s), strict=False) if isinstance(s, str) else None
    except ValueError:
        pass
    r.err(node, f"{what} must be an IP address or CIDR block (got {s!r})")
    return None


def _server(r: YamlReader, node: Node) -> Server | None:
    if not isinstance(r.value(node), str):
        f = r.mapping(node, ("address", "ports"), "server")
        if "address" not in f:
            r.err(node, "server needs address: IP or CIDR")
            return None
        net = _net(r, f["address"], "server address")
        ports = [r.integer(n, "port", 1, 65535) for n in r.seq(f["ports"], "ports")] if "ports" in f else []
        return Server(net, tuple(p for p in ports if p is not None)) if net is not None else None
    net = _net(r, node, "server")
    return Server(net) if net is not None else None


_KEYS = ("id", "customer", "protocols", "servers", "lan_hosts", "valid_from", "valid_until")


def _entry(r: YamlReader, node: Node) -> Entry | None:
    f = r.mapping(node, _KEYS, "registration")
    for need in ("id", "servers"):
        if need not in f:
            r.err(node, f"registration needs {need}")
            return None
    ident = r.string(f["id"], "id")
    protocols = [r.string(n, "protocols item") for n in r.seq(f["protocols"], "protocols")] \
        if "protocols" in f else []
    servers = [_server(r, n) for n in r.seq(f["servers"], "servers")]
    lan = [_net(r, n, "lan_hosts item") for n in r.seq(f["lan_hosts"], "lan_hosts")] \
        if "lan_hosts" in f else []
    if not servers:
        r.err(f["servers"], "servers must list at least one endpoint")
    for n, p in zip(r.seq(f["protocols"], "protocols") if "protocols" in f else [], protocols, strict=False):
        if p is not None and p not in known_protocols() and (guess := suggest_protocol(p)) is not None:
            r.err(n, f"protocols item {p!r} is not a protocol any classifier reports "
                     f"(did you mean {guess!r}?)")
    valid_from = r.opt(f, "valid_from", lambda n: r.date(n, "valid_from", end_of_day=False), None)
    valid_until = r.opt(f, "valid_until", lambda n: r.date(n, "valid_until"), None)
    if valid_from is not None and valid_until is not None and valid_from >= valid_until:
        r.err(f["valid_until"], f"valid_until ({f['valid_until'].value}) must come after valid_from "
              f"({f['valid_from'].value}): this registration would never be valid")
    if ident is None or None in servers or None in lan or None in protocols:
        return None
    return Entry(
        id=ident,
        customer=r.opt(f, "customer", lambda n: r.string(n, "customer"), ""),
        protocols=tuple(p for p in protocols if p),
        servers=tuple(s for s in servers if s is not None),
        lan_hosts=tuple(n for n in lan if n is not None),
        valid_from=valid_from,
        valid_until=valid_until,
    )


def parse_registry(text: str, path: str = "<registry>") -> list[Entry]:
    """Parse a registry document; raise ConfigError listing every problem."""
    r = YamlReader(path)
    root = r.load(text)
    if root is None:
        if r.problems:
            raise ConfigError(r.problems)
        return []
    top = r.mapping(root, ("registrations",), "the registry")
    entries: list[Entry] = []
    seen: set[str] = set()
    for n in r.seq(top["registrations"], "registrations") if "registrations" in top else []:
        e = _entry(r, n)
        if e is not None:
            if e.id in seen:
                r.err(n, f"duplicate registration id {e.id!r}")
            seen.add(e.id)
            entries.append(e)
    if r.problems:
        raise ConfigError(r.problems)
    return entries


class Registry:
    """The live set of registrations, reloadable without losing the last good version."""

    def __init__(self, entries: list[Entry] | None = None, path: Path | None = None) -> None:
        self.entries = list(entries or [])
        self.path = path

    @classmethod
    def load(cls, path: Path) -> Registry:
        """Load a registry file; raise ConfigError when it is unreadable or invalid."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise ConfigError([f"{path}: cannot read the registry: {why}"]) from exc
        return cls(parse_registry(text, str(path)), path)

    def reload(self) -> bool:
        """Re-read the file; on any problem log it, keep the last good entries and return False."""
        if self.path is None:
            return True
        try:
            fresh = Registry.load(self.path)
        except ConfigError as exc:
            for p in exc.problems:
                log.error("registry: %s", p)
            log.error("registry: keeping the last good registry (%d entries)", len(self.entries))
            return False
        self.entries = fresh.entries
        log.info("registry: loaded %d entries from %s", len(self.entries), self.path)
        return True

    def lookup(self, flow: Flow, protocol: str, now: dt.datetime) -> Entry | None:
        """The valid registration covering this flow (initiator = LAN side) and protocol, if any."""
        client = ipaddress.ip_address(flow.src)
        server = ipaddress.ip_address(flow.dst)
        for e in self.entries:
            if e.protocols and protocol not in e.protocols:
                continue
            if not e.valid(now):
                continue
            if e.lan_hosts and not any(client in n for n in e.lan_hosts):
                continue
            for s in e.servers:
                if server in s.net and (not s.ports or flow.dport in s.ports):
                    return e
        return None

    def active(self, now: dt.datetime) -> list[Entry]:
        """Entries valid now (what the kernel fast path lets through without queueing)."""
        return [e for e in self.entries if e.valid(now)]

