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
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

CHAIN: Final = "TUNNELWATCH"
NFT_TABLE: Final = "tunnelwatch"
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
    backend: str = "iptables"
    #: (transport, server port, packets): connections to these ports are queued deeper than `packets`
    #: (SSH: port forwarding shows only after authentication, ~30 packets in)
    deep: tuple[tuple[str, int, int], ...] = ()


def _family(addr: str) -> int:
    return ipaddress.ip_network(addr, strict=False).version


def _m(x: int) -> str:
    return f"0x{x:x}/0x{MARK_MASK:x}"


# u32 tests that succeed only when a 4-byte word exists at the TCP payload start (IPv6: no extension
# headers assumed; with them the read lands elsewhere in the packet and the segment is simply queued).
_NO_PAYLOAD: Final = {4: "0>>22&0x3C@12>>26&0x3C@0>>24=0:255", 6: "52>>26&0x3C@40>>24=0:255"}


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
    # TCP handshake and reset segments carry no payload to classify: keeping them out of userspace
    # takes the queue's latency off every connection set-up (they still count towards connbytes).
    mangle += [f"-A {CHAIN} -p tcp --tcp-flags SYN SYN -j RETURN",
               f"-A {CHAIN} -p tcp --tcp-flags RST RST -j RETURN",
               # Pure ACKs carry nothing to classify either: u32 cannot read a 4-byte word at the start
               # of the TCP payload (IP header length + data offset), so the negated match skips them.
               f"-A {CHAIN} -p tcp -m u32 ! --u32 {_NO_PAYLOAD[version]} -j RETURN"]
    for proto, port, packets in spec.deep:
        mangle.append(f"-A {CHAIN} -m conntrack --ctproto {proto} --ctorigdstport {port} -m connbytes "
                      f"--connbytes 0:{packets} --connbytes-dir both --connbytes-mode packets -j {target}")
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
        _run([_tool(version), "-w", "-t", table, "-F", CHAIN], check=False)
        _run([_tool(version), "-w", "-t", table, "-X", CHAIN], check=False)


def remove_iptables() -> None:
    """Remove our iptables rules (both families); safe to call when nothing is installed."""
    for v in (4, 6):
        remove_family(v)


def remove() -> None:
    """Remove every rule of ours, whichever backend installed it; safe to call when nothing is installed."""
    remove_iptables()
    if shutil.which("nft") is not None:
        _run(["nft", "delete", "table", "inet", NFT_TABLE], check=False)


def saved_rules(version: int = 4) -> list[str]:
    """Our lines in `iptables-save` output (chain declarations, jumps and chain rules)."""
    out = _run([_tool(version, "-save")]).stdout
    return [ln for ln in out.splitlines() if CHAIN in ln]


def _nft_mark(x: int) -> str:
    return f"0x{x:08x}"


def _nft_bypass(b: Bypass) -> list[str]:
    fam = "ip" if _family(b.server) == 4 else "ip6"
    lans = [h for h in b.lan_hosts if _family(h) == _family(b.server)] or [""]
    if b.lan_hosts and lans == [""]:
        return []
    out = []
    for lan in lans:
        match = (f"ct original {fam} saddr {lan} " if lan else "") + f"ct original {fam} daddr {b.server}"
        if not b.ports:
            out.append(f"{match} return")
            continue
        ports = ", ".join(str(p) for p in b.ports)
        # one protocol per rule: only then does nft type proto-dst as a port (network byte order)
        out += [f"meta l4proto {proto} {match} ct original proto-dst {{ {ports} }} return"
                for proto in ("tcp", "udp")]
    return out


def nft_rules(spec: Spec) -> dict[str, list[str]]:
    """The rules of our two nft chains, "queue" (mangle priority) and "verdict" (filter priority)."""
    queue = [f"ct mark & {_nft_mark(MARK_MASK)} != 0 return"]
    if not spec.ipv6:
        queue.append("meta nfproto ipv6 return")
    if "input" in spec.hooks or "output" in spec.hooks:
        queue += ['iifname "lo" return', 'oifname "lo" return']
    for b in spec.bypass:
        if spec.ipv6 or _family(b.server) == 4:
            queue += _nft_bypass(b)
    flags = [] if spec.fail_closed else ["bypass"]
    if spec.queue_count > 1:
        nums = f"{spec.queue_num}-{spec.queue_num + spec.queue_count - 1}"
        flags.append("fanout")
    else:
        nums = str(spec.queue_num)
    flag_text = f" {','.join(flags)}" if flags else ""
    queue.append("tcp flags & (syn | rst) != 0 return")  # no payload to classify (see chain_rules)
    for proto, port, packets in spec.deep:
        queue.append(f"meta l4proto {proto} ct original proto-dst {port} ct packets <= {packets} "
                     f"queue num {nums}{flag_text}")
    queue.append(f"ct packets <= {spec.packets} queue num {nums}{flag_text}")
    keep = _nft_mark(~MARK_MASK & 0xFFFFFFFF)
    verdict = [f"meta mark & {_nft_mark(MARK_MASK)} == {_nft_mark(m)} ct mark set ct mark & {keep} | "
               f"{_nft_mark(m)}" for m in (MARK_ALLOW, MARK_DROP, MARK_REJECT)]
    is_drop = f"ct mark & {_nft_mark(MARK_MASK)} == {_nft_mark(MARK_DROP)}"
    is_reject = f"ct mark & {_nft_mark(MARK_MASK)} == {_nft_mark(MARK_REJECT)}"
    verdict += [f"{is_drop} drop", f"meta l4proto tcp {is_reject} reject with tcp reset",
                f"{is_reject} reject with icmpx port-unreachable"]
    return {"queue": queue, "verdict": verdict}


def nft_script(spec: Spec) -> str:
    """An `nft -f -` script replacing our table atomically (declare, delete, define: one transaction)."""
    rules = nft_rules(spec)
    lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}", f"table inet {NFT_TABLE} {{"]
    for hook in spec.hooks:
        for chain, prio in (("queue", "mangle"), ("verdict", "filter")):
            lines += [f"  chain {chain}_{hook} {{",
                      f"    type filter hook {hook} priority {prio}; policy accept;"]
            lines += [f"    {r}" for r in rules[chain]]
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


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
