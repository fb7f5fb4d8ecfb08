"""The kernel side of enforcement: the only module that runs iptables / ip6tables.

Our rules live in one chain, TUNNELWATCH, in two tables, jumped to from the first position of the
configured hooks (FORWARD, INPUT, OUTPUT), for IPv4 and IPv6:

* mangle: connections with a decision in the connmark return at once (kernel fast path); registered
  endpoints return without ever being queued; otherwise only the first N packets of a connection
  (connbytes) go to the NFQUEUE, with --queue-bypass so traffic flows when no daemon is bound.
* filter: a decision the daemon put in the packet mark is saved into the connmark, and connections
  marked blocked are dropped or rejected here, in the kernel, for the rest of their life.

Mangle runs before filter at the same hook, so a packet the daemon accepts with a mark reaches the filter
chain next. Install writes both chains with one `iptables-restore --noflush` per family (a chain
declaration flushes it; jumps are added only when absent), so restarts never duplicate rules.

Backends: iptables (iptables-nft on Debian) works everywhere. The native nftables backend writes the same
logic as one `inet tunnelwatch` table, replaced atomically by `nft -f -`; it needs the kernel's nft
`queue` expression (CONFIG_NFT_QUEUE), so `choose_backend("auto")` probes for it by loading a throw-away
table with a queue rule in one transaction (the kernel answers ENOENT without the expression and the
transaction leaves nothing behind) and falls back to iptables.

Nothing is allowed for good on a guess (docs/enforcement.md). The connmark's decision bits (MARK_MASK)
hold ALLOW, DROP, REJECT (final: the kernel fast path) or WATCH (the daemon saw the flow, could not
confirm what it is, and wants to look again). Connections without a final decision (connmark 0 or WATCH)
are queued in the main window (`window(packets)`: the engine's budget plus room for handshake and pure
ACKs, which count in connbytes but are never queued), then again in short later windows (LATER_WINDOWS)
and, for UDP, whenever a WireGuard-handshake-sized datagram passes (at most a few per connection and
hour); past the last window the kernel sets ALLOW itself. TCP segments are queued when they carry any
payload (an exact IP-length test per TCP data offset; SYN with data included); payload-less ones skip.

Accountable fail-open: every packet sent to the queue gets the PENDING bit in its packet mark; the daemon's
verdict clears it. A packet reaching the filter chain with PENDING still set passed unverdicted (queue
full with fail-open, or no daemon with --queue-bypass): counted there (packets, and flows through a
BYPASSED connmark bit), read back with `counters()`. A per-source hashlimit on new connections before
the queue (`Spec.new_flow_rate`/`new_flow_burst`) drops one LAN host's flood instead of letting it push
everybody into fail-open; its drops are counted too, and `limited_hosts()` names the hosts over it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from tunnelwatch.inline.rulespec import (
    _ACCT as _ACCT,
)
from tunnelwatch.inline.rulespec import (
    _HOOK_CHAINS as _HOOK_CHAINS,
)
from tunnelwatch.inline.rulespec import (
    CHAIN as CHAIN,
)
from tunnelwatch.inline.rulespec import (
    HANDSHAKE_LENGTHS as HANDSHAKE_LENGTHS,
)
from tunnelwatch.inline.rulespec import (
    HANDSHAKE_RATE as HANDSHAKE_RATE,
)
from tunnelwatch.inline.rulespec import (
    LATER_WINDOWS as LATER_WINDOWS,
)
from tunnelwatch.inline.rulespec import (
    MARK_ALLOW as MARK_ALLOW,
)
from tunnelwatch.inline.rulespec import (
    MARK_BYPASSED as MARK_BYPASSED,
)
from tunnelwatch.inline.rulespec import (
    MARK_DROP as MARK_DROP,
)
from tunnelwatch.inline.rulespec import (
    MARK_FINAL as MARK_FINAL,
)
from tunnelwatch.inline.rulespec import (
    MARK_MASK as MARK_MASK,
)
from tunnelwatch.inline.rulespec import (
    MARK_PENDING as MARK_PENDING,
)
from tunnelwatch.inline.rulespec import (
    MARK_REJECT as MARK_REJECT,
)
from tunnelwatch.inline.rulespec import (
    MARK_WATCH as MARK_WATCH,
)
from tunnelwatch.inline.rulespec import (
    NFT_TABLE as NFT_TABLE,
)
from tunnelwatch.inline.rulespec import (
    QCHAIN as QCHAIN,
)
from tunnelwatch.inline.rulespec import (  # re-exported: firewall.X is the one name callers use
    Bypass as Bypass,
)
from tunnelwatch.inline.rulespec import (
    FirewallError as FirewallError,
)
from tunnelwatch.inline.rulespec import (
    Spec as Spec,
)
from tunnelwatch.inline.rulespec import (
    chain_rules as chain_rules,
)
from tunnelwatch.inline.rulespec import (
    last_packet as last_packet,
)
from tunnelwatch.inline.rulespec import (
    nft_rules as nft_rules,
)
from tunnelwatch.inline.rulespec import (
    nft_script as nft_script,
)
from tunnelwatch.inline.rulespec import (
    restore_script as restore_script,
)
from tunnelwatch.inline.rulespec import (
    window as window,
)

log = logging.getLogger(__name__)

def _tool(version: int, suffix: str = "") -> str:
    return ("iptables" if version == 4 else "ip6tables") + suffix


def _run(args: Sequence[str], stdin: str | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirewallError(f"{args[0]}: {exc}") from exc
    if check and r.returncode != 0:
        raise FirewallError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def _has_jump(version: int, table: str, chain: str) -> bool:
    return _run([_tool(version), "-w", "-t", table, "-C", chain, "-j", CHAIN], check=False).returncode == 0


def mark_connection(proto: str, src: str, sport: int, dst: str, dport: int, mark: int) -> bool:
    """Set our decision bits on one existing conntrack entry (either direction); True when it was found.

    For decisions made after the kernel stopped queueing the connection (see Engine.decide_quiet): no
    packet of it passes userspace any more, so the mark cannot ride on a verdict.
    """
    if proto not in ("tcp", "udp"):
        return False
    for a, ap, b, bp in ((src, sport, dst, dport), (dst, dport, src, sport)):
        try:
            r = _run(["conntrack", "-U", "-p", proto, "-s", a, "-d", b, "--sport", str(ap),
                      "--dport", str(bp), "--mark", f"{mark}/{MARK_MASK}"], check=False)
        except FirewallError as exc:
            log.warning("conntrack: %s", exc)
            return False
        if r.returncode == 0:
            return True
    return False


def enable_accounting() -> None:
    """connbytes counts nothing without conntrack accounting: switch it on in this namespace."""
    try:
        if _ACCT.read_text().strip() != "1":
            _ACCT.write_text("1\n")
    except OSError as exc:
        log.warning("cannot enable %s (%s): connbytes will not match, the queue sees no packet", _ACCT, exc)


def versions(spec: Spec) -> tuple[int, ...]:
    """The IP versions rules are installed for."""
    return (4, 6) if spec.ipv6 else (4,)


def install(spec: Spec) -> None:
    """Install or refresh our rules idempotently; stale jumps of hooks no longer configured are removed."""
    if spec.backend == "nftables":
        enable_accounting()
        _run(["nft", "-f", "-"], stdin=nft_script(spec))
        enable_accounting()
        remove_iptables()  # a switch of backend must not leave the other one's rules queueing too
        return
    enable_accounting()
    for v in versions(spec):
        missing = [(t, _HOOK_CHAINS[h]) for t in ("mangle", "filter") for h in spec.hooks
                   if not _has_jump(v, t, _HOOK_CHAINS[h])]
        _run([_tool(v, "-restore"), "-w", "--noflush"], stdin=restore_script(spec, v, missing))
        for t in ("mangle", "filter"):
            for hook, chain in _HOOK_CHAINS.items():
                if hook not in spec.hooks:
                    _delete_jumps(v, t, chain)
    enable_accounting()  # the proc file appears only once conntrack is loaded, i.e. after the first install
    if not spec.ipv6:
        remove_family(6)


def _delete_jumps(version: int, table: str, chain: str) -> None:
    for _ in range(32):  # bounded: a jump duplicated by hand is removed too
        if _run([_tool(version), "-w", "-t", table, "-D", chain, "-j", CHAIN], check=False).returncode:
            return


def remove_family(version: int) -> None:
    """Remove our jumps and chains for one IP version; absent rules are fine."""
    for table in ("mangle", "filter"):
        for chain in _HOOK_CHAINS.values():
            _delete_jumps(version, table, chain)
        for chain in (CHAIN, QCHAIN):  # flush both first: the main chain jumps to the queue chain
            _run([_tool(version), "-w", "-t", table, "-F", chain], check=False)
        for chain in (CHAIN, QCHAIN):
            _run([_tool(version), "-w", "-t", table, "-X", chain], check=False)


def remove_iptables() -> None:
    """Remove our iptables rules (both families); safe to call when nothing is installed."""
    for v in (4, 6):
        remove_family(v)


def remove() -> None:
    """Remove every rule of ours, whichever backend installed it; safe to call when nothing is installed."""
    remove_iptables()
    if shutil.which("nft") is not None:
        _run(["nft", "delete", "table", "inet", NFT_TABLE], check=False)


COUNTERS: Final = ("bypassed_packets", "bypassed_flows", "flood_dropped")
_COUNTED: Final = re.compile(r"^\[(\d+):\d+\] -A TUNNELWATCH .*--comment \"?tw:([a-z_]+)")


def parse_counters(save_output: str) -> dict[str, int]:
    """Our counting rules' packet counts in `iptables-save -c` output, summed by name."""
    out = dict.fromkeys(COUNTERS, 0)
    for ln in save_output.splitlines():
        m = _COUNTED.match(ln)
        if m is not None and m.group(2) in out:
            out[m.group(2)] += int(m.group(1))
    return out


def parse_nft_counters(listing: str) -> dict[str, int]:
    """The same from `nft -j list table inet tunnelwatch` (rules with a `tw:` comment and a counter)."""
    out = dict.fromkeys(COUNTERS, 0)
    try:
        items = json.loads(listing).get("nftables", [])
    except (ValueError, AttributeError):
        return out
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        name = str(rule.get("comment", "")).removeprefix("tw:")
        for e in rule.get("expr", []):
            if name in out and isinstance(e, dict) and isinstance(e.get("counter"), dict):
                out[name] += int(e["counter"].get("packets", 0))
    return out


def counters(spec: Spec) -> dict[str, int]:
    """Kernel counters of fail-open and the flood limit, summed over families and tables (cumulative
    since the rules were installed): packets/flows that passed unverdicted, new connections dropped."""
    if spec.backend == "nftables":
        r = _run(["nft", "-j", "list", "table", "inet", NFT_TABLE], check=False)
        return parse_nft_counters(r.stdout)
    total = dict.fromkeys(COUNTERS, 0)
    for v in versions(spec):
        for table in ("mangle", "filter"):
            r = _run([_tool(v, "-save"), "-c", "-t", table], check=False)
            for k, n in parse_counters(r.stdout).items():
                total[k] += n
    return total


_HASHLIMIT: Final = {4: Path("/proc/net/ipt_hashlimit"), 6: Path("/proc/net/ip6t_hashlimit")}


def limited_hosts(spec: Spec, proc: dict[int, Path] | None = None) -> list[str]:
    """Source addresses whose new-connection bucket is empty now (they are over the flood limit).

    Read from the hashlimit table's proc file: `expires src:0->0.0.0.0:0 credit credit_cap cost`.
    """
    out: list[str] = []
    for v in versions(spec):
        path = (proc or _HASHLIMIT)[v] / f"tw_new{v}"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if len(f) >= 5 and f[2].isdigit() and f[4].isdigit() and int(f[2]) < int(f[4]):
                out.append(f[1].split("->")[0].rsplit(":", 1)[0].strip("[]"))
    return out


_PROBE: Final = ("table inet tunnelwatch_probe {\n  chain probe {\n    type filter hook forward priority 0;\n"
                 "    ct packets <= 1 queue num 65535 bypass\n  }\n}\ndelete table inet tunnelwatch_probe\n")


def probe_nft_queue() -> tuple[bool, str]:
    """(True, "") when the kernel has the nft queue expression, else (False, why not)."""
    if shutil.which("nft") is None:
        return False, "no nft binary"
    # one transaction: it either loads and deletes the probe table, or fails leaving nothing behind
    r = _run(["nft", "-f", "-"], stdin=_PROBE, check=False)
    if r.returncode == 0:
        return True, ""
    err = (r.stderr or r.stdout).strip().splitlines()
    return False, err[0] if err else f"nft exit {r.returncode}"


def choose_backend(wanted: str = "auto") -> tuple[str, str]:
    """The backend to use and why: `auto` takes nftables when the probe passes, else iptables."""
    if wanted != "auto":
        return wanted, "configured"
    ok, why = probe_nft_queue()
    if ok:
        return "nftables", "nft queue expression present"
    return "iptables", f"nft queue expression unavailable ({why})"
