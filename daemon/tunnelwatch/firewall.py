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
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

CHAIN: Final = "TUNNELWATCH"
MARK_MASK: Final = 0x30000000
MARK_ALLOW: Final = 0x10000000
MARK_DROP: Final = 0x20000000
MARK_REJECT: Final = 0x30000000
_HOOK_CHAINS: Final = {"forward": "FORWARD", "input": "INPUT", "output": "OUTPUT"}
_ACCT: Final = Path("/proc/sys/net/netfilter/nf_conntrack_acct")


class FirewallError(Exception):
    """An iptables command failed."""


@dataclass(frozen=True)
class Bypass:
    """A registered endpoint whose connections skip the queue: server block, optional ports/LAN hosts."""

    server: str
    ports: tuple[int, ...] = ()
    lan_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Spec:
    """What to install."""

    queue_num: int = 0
    queue_count: int = 1
    packets: int = 16
    fail_closed: bool = False
    hooks: tuple[str, ...] = ("forward",)
    ipv6: bool = True
    bypass: tuple[Bypass, ...] = ()


def _family(addr: str) -> int:
    return ipaddress.ip_network(addr, strict=False).version


def _m(x: int) -> str:
    return f"0x{x:x}/0x{MARK_MASK:x}"


def chain_rules(spec: Spec, version: int) -> dict[str, list[str]]:
    """The rules of our chain per table (`-A TUNNELWATCH ...` lines) for IP version 4 or 6."""
    mangle = [f"-A {CHAIN} -m connmark ! --mark {_m(0)} -j RETURN"]
    if "input" in spec.hooks or "output" in spec.hooks:
        mangle += [f"-A {CHAIN} -i lo -j RETURN", f"-A {CHAIN} -o lo -j RETURN"]
    for b in spec.bypass:
        if _family(b.server) != version:
            continue
        lans = [h for h in b.lan_hosts if _family(h) == version] or [""]
        if b.lan_hosts and lans == [""]:
            continue  # restricted to LAN hosts of the other family only
        for lan in lans:
            src = f" --ctorigsrc {lan}" if lan else ""
            if not b.ports:
                mangle.append(f"-A {CHAIN} -m conntrack{src} --ctorigdst {b.server} -j RETURN")
            for port in b.ports:
                for proto in ("tcp", "udp"):
                    mangle.append(f"-A {CHAIN} -m conntrack --ctproto {proto}{src} --ctorigdst {b.server} "
                                  f"--ctorigdstport {port} -j RETURN")
    if spec.queue_count > 1:
        target = f"NFQUEUE --queue-balance {spec.queue_num}:{spec.queue_num + spec.queue_count - 1}"
    else:
        target = f"NFQUEUE --queue-num {spec.queue_num}"
    if not spec.fail_closed:
        target += " --queue-bypass"
    mangle.append(f"-A {CHAIN} -m connbytes --connbytes 0:{spec.packets} --connbytes-dir both "
                  f"--connbytes-mode packets -j {target}")
    unreach = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
    filt = [
        f"-A {CHAIN} -m mark ! --mark {_m(0)} -j CONNMARK --save-mark "
        f"--nfmask 0x{MARK_MASK:x} --ctmask 0x{MARK_MASK:x}",
        f"-A {CHAIN} -m connmark --mark {_m(MARK_DROP)} -j DROP",
        f"-A {CHAIN} -p tcp -m connmark --mark {_m(MARK_REJECT)} -j REJECT --reject-with tcp-reset",
        f"-A {CHAIN} -m connmark --mark {_m(MARK_REJECT)} -j REJECT --reject-with {unreach}",
    ]
    return {"mangle": mangle, "filter": filt}


def restore_script(spec: Spec, version: int, missing_jumps: Iterable[tuple[str, str]] = ()) -> str:
    """An `iptables-restore --noflush` script: (re)create our chains and add the given missing jumps."""
    missing = set(missing_jumps)
    lines: list[str] = []
    for table, rules in chain_rules(spec, version).items():
        lines += [f"*{table}", f":{CHAIN} - [0:0]", *rules]
        for hook in spec.hooks:
            if (table, _HOOK_CHAINS[hook]) in missing:
                lines.append(f"-I {_HOOK_CHAINS[hook]} 1 -j {CHAIN}")
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


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
        _run([_tool(version), "-w", "-t", table, "-F", CHAIN], check=False)
        _run([_tool(version), "-w", "-t", table, "-X", CHAIN], check=False)


def remove() -> None:
    """Remove every rule of ours (both families); safe to call when nothing is installed."""
    for v in (4, 6):
        remove_family(v)


def saved_rules(version: int = 4) -> list[str]:
    """Our lines in `iptables-save` output (chain declarations, jumps and chain rules)."""
    out = _run([_tool(version, "-save")]).stdout
    return [ln for ln in out.splitlines() if CHAIN in ln]
