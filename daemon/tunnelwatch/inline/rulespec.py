"""Our rules as text, for both backends: what to install for a Spec, and the mark bits they share.

Pure (no subprocess, no kernel): firewall.py installs and removes what this module writes; kernelview.py
replays the same windows on a capture. See firewall.py's docstring for what the rules do.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tunnelwatch.classify.engine import INLINE_BUDGET

CHAIN: Final = "TUNNELWATCH"
NFT_TABLE: Final = "tunnelwatch"
#: the decision bits of the packet mark and connmark (the daemon's verdict sets them, save-mark keeps them)
MARK_MASK: Final = 0x70000000
#: the final decisions: a connmark with any of these bits set is handled in the kernel alone
MARK_FINAL: Final = 0x30000000
MARK_ALLOW: Final = 0x10000000
MARK_DROP: Final = 0x20000000
MARK_REJECT: Final = 0x30000000
#: not decided for good: queued again in later windows (see the module docstring)
MARK_WATCH: Final = 0x40000000
#: packet mark: sent to the queue, no verdict yet (cleared by every daemon verdict)
MARK_PENDING: Final = 0x08000000
#: connmark: at least one packet of this connection passed the queue unverdicted
MARK_BYPASSED: Final = 0x08000000
#: (first, last) connbytes packet counts at which connections without a final decision are queued again
LATER_WINDOWS: Final = ((64, 72), (512, 520), (4096, 4104))
#: IP packet lengths (v4, v6) of WireGuard's handshake initiation (148 B) and response (92 B) over UDP
HANDSHAKE_LENGTHS: Final = {4: (176, 120), 6: (196, 140)}
HANDSHAKE_RATE: Final = "6/hour"  # handshake-sized packets queued per connection and direction, at most
QCHAIN: Final = "TUNNELWATCH_Q"
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
    packets: int = INLINE_BUDGET
    fail_closed: bool = False
    hooks: tuple[str, ...] = ("forward",)
    ipv6: bool = True
    bypass: tuple[Bypass, ...] = ()
    backend: str = "iptables"
    #: (transport, server port, packets): connections to these ports are queued deeper than `packets`
    #: (SSH: port forwarding shows only after authentication, ~30 packets in)
    deep: tuple[tuple[str, int, int], ...] = ()
    #: new connections per second and source address before the queue (0: no limit), and the burst
    new_flow_rate: int = 500
    new_flow_burst: int = 1000


def window(packets: int) -> int:
    """The kernel's first connbytes window for an engine budget of `packets` queued packets.

    connbytes counts every packet both ways, SYN and pure ACKs included, while only payload reaches the
    daemon: the slack keeps a burst of duplicate ACKs from pushing the first data out of the window.
    """
    return 2 * packets + 16


def _family(addr: str) -> int:
    return ipaddress.ip_network(addr, strict=False).version


def _m(x: int) -> str:
    return f"0x{x:x}/0x{MARK_MASK:x}"


def _no_payload(version: int, offset: int) -> str:
    """A u32 test true when a TCP segment with this data offset (in 32-bit words) carries no payload.

    IPv4: header of 20 bytes (IP options are rare; with them the test fails and the segment is queued)
    and total length == 20 + 4 * offset. IPv6: next header TCP (no extension headers, else queued) and
    payload length == 4 * offset.
    """
    n = 4 * offset
    if version == 4:
        return f"0>>24=0x45&&0&0xFFFF={20 + n}&&32>>28={offset}"
    return f"4>>8&0xFF=6&&4>>16={n}&&52>>28={offset}"


def _counted(name: str) -> str:
    return f"-m comment --comment tw:{name}"


def _windows(spec: Spec, version: int, jump: str) -> list[str]:
    """Rules sending connections without a final decision to the queue chain, window by window."""
    cb = "--connbytes-dir both --connbytes-mode packets"
    first = window(spec.packets)
    out = []
    for proto, port, packets in spec.deep:
        out.append(f"-A {CHAIN} -m conntrack --ctproto {proto} --ctorigdstport {port} -m connbytes "
                   f"--connbytes 0:{window(packets)} {cb} -j {jump}")
    out.append(f"-A {CHAIN} -m connbytes --connbytes 0:{first} {cb} -j {jump}")
    for lo, hi in LATER_WINDOWS:
        if lo > first:
            out.append(f"-A {CHAIN} -m connbytes --connbytes {lo}:{hi} {cb} -j {jump}")
    out += _handshakes(version, jump, "", "hs")
    return out


def _handshakes(version: int, jump: str, match: str, name: str) -> list[str]:
    """WireGuard-handshake-sized UDP packets to the queue chain, a few per connection and hour."""
    return [f"-A {CHAIN} -p udp{match} -m length --length {length} -m hashlimit --hashlimit-upto "
            f"{HANDSHAKE_RATE} --hashlimit-burst 2 --hashlimit-mode srcip,srcport,dstip,dstport "
            f"--hashlimit-name tw_{name}{i}_{version} -j {jump}"
            for i, length in enumerate(HANDSHAKE_LENGTHS[version])]


def last_packet(spec: Spec) -> int:
    """The connbytes count after which a connection without a final decision is allowed for good."""
    return max([window(spec.packets), *(window(n) for _, _, n in spec.deep),
                *(hi for _, hi in LATER_WINDOWS)])


def host_slots(spec: Spec) -> list[int]:
    """The queue of each value of the initiator address's low bits (see _steer): slot i -> queue."""
    n = spec.queue_count
    size = 1 << (n - 1).bit_length()
    if size != n:
        size *= 4  # 3 queues over 16 slots: 6/5/5 rather than 2/1/1 over 4
    return [spec.queue_num + v % n for v in range(size)]


def _steer(spec: Spec, version: int) -> list[str]:
    """The NFQUEUE rules: with several queues, every connection of one host goes to the same queue.

    The host is the connection's initiator (conntrack's original source), so its DNS answers, its calls
    and its flows meet in one worker: per-host state (learned names, concurrent VoIP calls) needs no
    sharing between workers. The queue is chosen by the low bits of that address (LAN addresses are
    handed out in sequence, and the per-host new-connection limit keeps one host from loading a worker
    beyond its share); --queue-balance would hash the address pair and split a host over workers.
    """
    bypass = "" if spec.fail_closed else " --queue-bypass"
    last = [f"-A {QCHAIN} -j NFQUEUE --queue-num {spec.queue_num}{bypass}"]
    if spec.queue_count == 1:
        return last
    slots = host_slots(spec)
    # offsets of the last 32-bit word of the source / destination address in the IP header
    where = {"ORIGINAL": 12 if version == 4 else 20, "REPLY": 16 if version == 4 else 36}
    out = [f"-A {QCHAIN} -m conntrack --ctdir {d} -m u32 --u32 {off}&0x{len(slots) - 1:x}=0x{v:x} "
           f"-j NFQUEUE --queue-num {q}{bypass}"
           for v, q in enumerate(slots) for d, off in where.items()]
    return out + last  # untracked packets never get here (connbytes needs conntrack): a safety net


def chain_rules(spec: Spec, version: int) -> dict[str, list[str]]:
    """The rules of our chains per table (`-A TUNNELWATCH ...` / `-A TUNNELWATCH_Q ...` lines) for IP
    version 4 or 6."""
    # A UDP connection allowed for good keeps its conntrack entry (and the allow) while packets flow, so
    # a client can talk DNS from a port, then run WireGuard on the same 5-tuple: its handshake-sized
    # packets still go to the queue, where the enforcer classifies them as a new connection.
    mangle = _handshakes(version, QCHAIN, f" -m connmark --mark {_m(MARK_ALLOW)}", "ha")
    mangle.append(f"-A {CHAIN} -m connmark ! --mark 0x0/0x{MARK_FINAL:x} -j RETURN")
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
    if spec.new_flow_rate:
        # one host's flood of new connections must not fill the queue for everybody (fail-open)
        mangle.append(f"-A {CHAIN} -m conntrack --ctstate NEW -m hashlimit --hashlimit-above "
                      f"{spec.new_flow_rate}/sec --hashlimit-burst {spec.new_flow_burst} --hashlimit-mode "
                      f"srcip --hashlimit-name tw_new{version} {_counted('flood_dropped')} -j DROP")
    # past the last window nothing more is learnt: the kernel allows the connection for good
    mangle.append(f"-A {CHAIN} -m connbytes --connbytes {last_packet(spec) + 1}: --connbytes-dir both "
                  f"--connbytes-mode packets -j CONNMARK --set-xmark 0x{MARK_ALLOW:x}/0x{MARK_MASK:x}")
    mangle += _windows(spec, version, QCHAIN)
    # the queue chain: reset segments and payload-less TCP (handshake, pure ACKs) carry nothing to
    # classify; keeping them out of userspace takes the queue's latency off every connection set-up
    queue = [f"-A {QCHAIN} -p tcp --tcp-flags RST RST -j RETURN"]
    queue += [f"-A {QCHAIN} -p tcp -m u32 --u32 {_no_payload(version, off)} -j RETURN"
              for off in range(5, 16)]
    queue.append(f"-A {QCHAIN} -j MARK --set-xmark 0x{MARK_PENDING:x}/0x{MARK_PENDING:x}")
    queue += _steer(spec, version)
    unreach = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
    pending = f"-m mark --mark 0x{MARK_PENDING:x}/0x{MARK_PENDING:x}"
    filt = [
        # queued, yet no verdict cleared the pending bit: the kernel let it through without the daemon
        f"-A {CHAIN} {pending} -m connmark ! --mark 0x{MARK_BYPASSED:x}/0x{MARK_BYPASSED:x} "
        f"{_counted('bypassed_flows')} -j CONNMARK --set-xmark 0x{MARK_BYPASSED:x}/0x{MARK_BYPASSED:x}",
        f"-A {CHAIN} {pending} {_counted('bypassed_packets')} -j MARK --set-xmark 0x0/0x{MARK_PENDING:x}",
        f"-A {CHAIN} -m mark ! --mark {_m(0)} -j CONNMARK --save-mark "
        f"--nfmask 0x{MARK_MASK:x} --ctmask 0x{MARK_MASK:x}",
        f"-A {CHAIN} -m connmark --mark {_m(MARK_DROP)} -j DROP",
        f"-A {CHAIN} -p tcp -m connmark --mark {_m(MARK_REJECT)} -j REJECT --reject-with tcp-reset",
        f"-A {CHAIN} -m connmark --mark {_m(MARK_REJECT)} -j REJECT --reject-with {unreach}",
    ]
    return {"mangle": mangle + queue, "filter": filt}


def restore_script(spec: Spec, version: int, missing_jumps: Iterable[tuple[str, str]] = ()) -> str:
    """An `iptables-restore --noflush` script: (re)create our chains and add the given missing jumps."""
    missing = set(missing_jumps)
    lines: list[str] = []
    for table, rules in chain_rules(spec, version).items():
        chains = [CHAIN, QCHAIN] if table == "mangle" else [CHAIN]
        lines += [f"*{table}", *(f":{c} - [0:0]" for c in chains), *rules]
        for hook in spec.hooks:
            if (table, _HOOK_CHAINS[hook]) in missing:
                lines.append(f"-I {_HOOK_CHAINS[hook]} 1 -j {CHAIN}")
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


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


def _nft_handshakes(match: str, name: str) -> list[str]:
    """The nft form of _handshakes, both families."""
    out = []
    for addr, v in (("ip", 4), ("ip6", 6)):
        for i, length in enumerate(HANDSHAKE_LENGTHS[v]):
            length_expr = f"ip length {length}" if v == 4 else f"ip6 length {length - 40}"
            out.append(f"{match}meta l4proto udp {length_expr} meter tw_{name}{i}_{addr} {{ {addr} saddr . "
                       f"udp sport . {addr} daddr . udp dport limit rate 6/hour burst 2 packets }} jump q")
    return out


def _nft_steer(spec: Spec) -> list[str]:
    """The nft form of the pending mark and _steer: the initiator address's low bits choose the queue."""
    flag = "" if spec.fail_closed else " bypass"
    pending = f"meta mark set meta mark | {_nft_mark(MARK_PENDING)}"
    if spec.queue_count == 1:
        return [f"{pending} queue num {spec.queue_num}{flag}"]  # marked and queued by one rule
    out = [pending]
    slots = host_slots(spec)
    for addr, fam, fmt in (("ip", "ipv4", "0.0.0.{}"), ("ip6", "ipv6", "::{:x}")):
        for v, q in enumerate(slots):
            for d, field in (("original", "saddr"), ("reply", "daddr")):
                mask, value = fmt.format(len(slots) - 1), fmt.format(v)
                out.append(f"meta nfproto {fam} ct direction {d} {addr} {field} & {mask} == {value} "
                           f"queue num {q}{flag}")
    return [*out, f"queue num {spec.queue_num}{flag}"]


def nft_rules(spec: Spec) -> dict[str, list[str]]:
    """The rules of our nft chains: "queue" (mangle priority), "q" (the queue itself, jumped to per
    window) and "verdict" (filter priority); the same logic as chain_rules."""
    mask = _nft_mark(MARK_MASK)
    queue = _nft_handshakes(f"ct mark & {mask} == {_nft_mark(MARK_ALLOW)} ", "ha")
    queue.append(f"ct mark & {_nft_mark(MARK_FINAL)} != 0 return")
    if not spec.ipv6:
        queue.append("meta nfproto ipv6 return")
    if "input" in spec.hooks or "output" in spec.hooks:
        queue += ['iifname "lo" return', 'oifname "lo" return']
    for b in spec.bypass:
        if spec.ipv6 or _family(b.server) == 4:
            queue += _nft_bypass(b)
    if spec.new_flow_rate:
        for fam, addr in (("ipv4", "ip"), ("ipv6", "ip6")):
            queue.append(f"meta nfproto {fam} ct state new meter tw_new_{addr} {{ {addr} saddr limit rate "
                         f"over {spec.new_flow_rate}/second burst {spec.new_flow_burst} packets }} "
                         f'counter drop comment "tw:flood_dropped"')
    keep = _nft_mark(~MARK_MASK & 0xFFFFFFFF)
    queue.append(f"ct packets > {last_packet(spec)} ct mark set ct mark & {keep} | {_nft_mark(MARK_ALLOW)} "
                 "return")
    for proto, port, packets in spec.deep:
        queue.append(f"meta l4proto {proto} ct original proto-dst {port} ct packets <= {window(packets)} "
                     "jump q")
    first = window(spec.packets)
    queue.append(f"ct packets <= {first} jump q")
    queue += [f"ct packets {lo}-{hi} jump q" for lo, hi in LATER_WINDOWS if lo > first]
    queue += _nft_handshakes("", "hs")
    q = ["tcp flags & rst != 0 return"]
    # no payload: the IP length equals the headers (IPv4 without options, IPv6 without extension headers)
    q += [f"ip hdrlength 5 tcp doff {off} ip length {20 + 4 * off} return" for off in range(5, 16)]
    q += [f"ip6 nexthdr tcp tcp doff {off} ip6 length {4 * off} return" for off in range(5, 16)]
    q += _nft_steer(spec)
    pending = f"meta mark & {_nft_mark(MARK_PENDING)} != 0"
    verdict = [
        f"{pending} ct mark & {_nft_mark(MARK_BYPASSED)} == 0 ct mark set ct mark | "
        f'{_nft_mark(MARK_BYPASSED)} counter comment "tw:bypassed_flows"',
        f"{pending} meta mark set meta mark & {_nft_mark(~MARK_PENDING & 0xFFFFFFFF)} counter "
        'comment "tw:bypassed_packets"',
    ]
    verdict += [f"meta mark & {mask} == {_nft_mark(m)} ct mark set ct mark & {keep} | {_nft_mark(m)}"
                for m in (MARK_ALLOW, MARK_DROP, MARK_REJECT, MARK_WATCH)]
    is_drop = f"ct mark & {mask} == {_nft_mark(MARK_DROP)}"
    is_reject = f"ct mark & {mask} == {_nft_mark(MARK_REJECT)}"
    verdict += [f"{is_drop} drop", f"meta l4proto tcp {is_reject} reject with tcp reset",
                f"{is_reject} reject with icmpx port-unreachable"]
    return {"queue": queue, "q": q, "verdict": verdict}


def nft_script(spec: Spec) -> str:
    """An `nft -f -` script replacing our table atomically (declare, delete, define: one transaction)."""
    rules = nft_rules(spec)
    lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}", f"table inet {NFT_TABLE} {{",
             "  chain q {"]
    lines += [f"    {r}" for r in rules["q"]]
    lines.append("  }")
    for hook in spec.hooks:
        for chain, prio in (("queue", "mangle"), ("verdict", "filter")):
            lines += [f"  chain {chain}_{hook} {{",
                      f"    type filter hook {hook} priority {prio}; policy accept;"]
            lines += [f"    {r}" for r in rules[chain]]
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
