"""The per-host view: "why is this subscriber's VPN blocked?" from the daemon's recent decisions.

Like `fail2ban-client status <jail>`: the decisions about one LAN host (as either end), newest first, each
with what was detected, how sure, what was done and why (the reason names the rule's outcome or the
registration), the first evidence lines, and the `tunnelwatch explain` line that answers what would let it
through. The daemon keeps the last RECENT_MAX tagged or blocked decisions of all hosts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from tunnelwatch.appliance.statuspage import endpoint, when
from tunnelwatch.text import printable


def host_decisions(snap: Mapping[str, object], addr: str) -> list[dict[str, object]]:
    """The recent decisions involving `addr` (either end), newest first."""
    recent = snap.get("recent")
    if not isinstance(recent, list):
        return []
    return [r for r in recent if isinstance(r, dict) and addr in (r.get("src"), r.get("dst"))]


def valid_host(addr: str) -> bool:
    """Whether `addr` is an IP address (or a privacy pseudonym, which the daemon shows instead)."""
    try:
        ipaddress.ip_address(addr)
        return True
    except ValueError:
        return bool(addr) and len(addr) <= 64 and addr.isprintable() and " " not in addr


def render_host(snap: Mapping[str, object], addr: str, *, limit: int = 20) -> str:
    """The per-host view as text for `tunnelwatch status --host`."""
    p = printable
    rows = host_decisions(snap, addr)
    lines = [f"{p(addr)}: {len(rows)} recent tagged or blocked flow(s), newest first"]
    if not rows:
        lines.append("  none among the daemon's recent decisions (it keeps the last 200 of all hosts)")
    for r in rows[:limit]:
        src, dst = endpoint(r.get("src"), r.get("sport")), endpoint(r.get("dst"), r.get("dport"))
        lines.append(f"  {when(r.get('ts'))}  {p(r.get('transport'))} {p(src)} -> {p(dst)}")
        lines.append(f"    detected: {p(r.get('protocol'))} ({p(r.get('klass'))}, {p(r.get('confidence'))})")
        lines.append(f"    action:   {p(str(r.get('action')).upper())}: {p(r.get('reason'))}")
        if r.get("registration_id"):
            lines.append(f"    registration: {p(r.get('registration_id'))}")
        ev = r.get("evidence")
        if isinstance(ev, list) and ev:
            lines.append(f"    evidence: {p('; '.join(str(e) for e in ev), 300)}")
        if r.get("action") == "block":
            lines.append(f"    what would let it through: tunnelwatch explain --host {p(r.get('src'))} "
                         f"--server {p(r.get('dst'))} --port {p(r.get('dport'))} "
                         f"--transport {p(r.get('transport'))} --protocol {p(r.get('protocol'))}")
    return "\n".join(lines) + "\n"
