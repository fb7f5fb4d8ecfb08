"""The dry-run: would a flow from this LAN host to this server, of this protocol, pass? And why.

Like fail2ban-regex for a policy: `tunnelwatch explain --host H --server S --protocol P` answers with the
action, the rule that decided it (policy.protocol.X, policy.klass.Y or policy.default), the registration
that lets it through, or, for every registration of that host or server, why it does not.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from tunnelwatch.classify import REGISTRY
from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import Packet
from tunnelwatch.config.runconfig import RunConfig, rule_text
from tunnelwatch.policy.policy import Policy
from tunnelwatch.policy.registry import Entry, Registry
from tunnelwatch.verdict import FLAGGED, Confidence, Klass, Verdict

TRANSPORTS = {"tcp": 6, "udp": 17}


@dataclass(frozen=True)
class Explanation:
    """The answer of one dry-run."""

    action: str
    reason: str
    klass: str
    rule: str
    registration: str | None = None
    #: the kernel lets this traffic through without queueing it (a registration valid now)
    bypass: str | None = None
    #: registrations of this host or server that do not cover the flow, each with why not
    near: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The answer as a technician reads it."""
        out = [f"{self.action.upper()}: {self.reason}", f"  rule:         {self.rule}"]
        if self.registration:
            out.append(f"  registration: {self.registration}")
        if self.bypass:
            out.append(f"  kernel:       {self.bypass}")
        out += [f"  not covered:  {n}" for n in self.near]
        if self.action == "block" and not self.near:
            out.append("  to let it through: register the customer's VPN (host, server, protocol) "
                       "in the registry")
        return out


def klass_of(protocol: str) -> Klass:
    """The class a classifier reports this protocol as (a list's own protocol: vpn_tunnel)."""
    for c in REGISTRY:
        if protocol in c.protocols:
            return c.klass
    return "vpn_tunnel"


def _why_not(e: Entry, host: ipaddress.IPv4Address | ipaddress.IPv6Address,
             server: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, protocol: str,
             now: dt.datetime) -> str | None:
    """Why registration `e` does not cover the flow; None when it does."""
    if e.protocols and protocol not in e.protocols:
        return f"protocols {', '.join(e.protocols)} (not {protocol})"
    if e.valid_from is not None and now < e.valid_from:
        return f"not valid before {e.valid_from:%Y-%m-%d}"
    if e.valid_until is not None and now >= e.valid_until:
        return f"expired ({e.valid_until:%Y-%m-%d})"
    if e.lan_hosts and not any(host in n for n in e.lan_hosts):
        return f"LAN hosts {', '.join(map(str, e.lan_hosts))} (not {host})"
    if not any(server in s.net and (not s.ports or port in s.ports) for s in e.servers):
        ends = ", ".join(f"{s.net}" + (f" ports {','.join(map(str, s.ports))}" if s.ports else "")
                         for s in e.servers)
        return f"servers {ends} (not {server}:{port})"
    return None


def explain(cfg: RunConfig, registry: Registry, *, host: str, server: str, protocol: str, port: int = 0,
            transport: str = "udp", confidence: Confidence = "confirmed", now: dt.datetime | None = None
            ) -> Explanation:
    """Decide a synthetic flow the way the daemon would; raises ValueError for a bad address."""
    now = now or dt.datetime.now(dt.UTC)
    h, s = ipaddress.ip_address(host), ipaddress.ip_address(server)
    if h.version != s.version:
        raise ValueError("host and server must both be IPv4 or both IPv6")
    pkt = Packet(now.timestamp(), h.version, h.packed, s.packed, TRANSPORTS[transport], 40000, port, 0, b"")
    flow = Flow(flow_key(pkt), pkt)
    klass = klass_of(protocol)
    policy = Policy.from_config(cfg)
    verdict = Verdict(klass, protocol, confidence)
    d = policy.decide(flow, verdict, registry, now)
    if protocol in cfg.protocol:
        rule_name, rule = f"policy.protocol.{protocol}", cfg.protocol[protocol]
    elif klass in cfg.klass:
        rule_name, rule = f"policy.klass.{klass}", cfg.klass[klass]
    else:
        rule_name, rule = "policy.default", cfg.default
    rule_line = f"{rule_name}: {rule_text(rule)}" if klass in FLAGGED else "none (not a flagged class)"
    near: list[str] = []
    bypass = None
    for e in registry.entries:
        mine = any(h in n for n in e.lan_hosts) or any(s in sv.net for sv in e.servers)
        why = _why_not(e, h, s, port, protocol, now)
        if why is not None and mine and klass in FLAGGED:
            near.append(f"{e.id} ({e.customer or 'no customer'}): {why}")
        if e.valid(now) and (not e.lan_hosts or any(h in n for n in e.lan_hosts)) \
                and any(s in sv.net and (not sv.ports or port in sv.ports) for sv in e.servers):
            bypass = f"registration {e.id} is valid now: this host's traffic to {s} is never queued"
    reg = next((f"{e.id} ({e.customer})" if e.customer else e.id for e in registry.entries
                if e.id == d.registration), None)
    return Explanation(d.action, d.reason, klass, rule_line, reg, bypass, near)
