"""Rule generation and the install/remove logic of firewall.py, with iptables replaced by a recorder."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tunnelwatch.inline import firewall
from tunnelwatch.inline.firewall import CHAIN, QCHAIN, Bypass, Spec, chain_rules, restore_script


def _main(rules: list[str]) -> list[str]:
    return [r for r in rules if r.startswith(f"-A {CHAIN} ")]


def _queue_chain(rules: list[str]) -> list[str]:
    return [r for r in rules if r.startswith(f"-A {QCHAIN} ")]


def test_fast_path_rule_order() -> None:
    rules = chain_rules(Spec(queue_num=2, packets=12), 4)
    mangle, filt = _main(rules["mangle"]), rules["filter"]
    # connections with a final decision leave before anything else (WATCH, 0x4..., is not final), but for
    # the handshake-sized UDP packets of an allowed connection: a tunnel started on its 5-tuple
    ha = [f"-A {CHAIN} -p udp -m connmark --mark 0x10000000/0x70000000 -m length --length {n} -m hashlimit "
          "--hashlimit-upto 6/hour --hashlimit-burst 2 --hashlimit-mode srcip,srcport,dstip,dstport "
          f"--hashlimit-name tw_ha{i}_4 -j {QCHAIN}" for i, n in enumerate((176, 120))]
    assert mangle[:3] == [*ha, f"-A {CHAIN} -m connmark ! --mark 0x0/0x30000000 -j RETURN"]
    assert firewall.MARK_WATCH & firewall.MARK_FINAL == 0
    cb = "--connbytes-dir both --connbytes-mode packets"
    # the first window has room for handshake and pure ACKs beyond the engine's 12 packets
    assert f"-A {CHAIN} -m connbytes --connbytes 0:{firewall.window(12)} {cb} -j {QCHAIN}" in mangle
    assert firewall.window(12) >= 12 + 20  # 20 duplicate ACKs cannot push the data out
    q = _queue_chain(rules["mangle"])
    assert q[-1] == f"-A {QCHAIN} -j NFQUEUE --queue-num 2 --queue-bypass"
    assert q[-2] == f"-A {QCHAIN} -j MARK --set-xmark 0x8000000/0x8000000"  # pending until a verdict
    assert "CONNMARK --save-mark" in filt[2] and "--nfmask 0x70000000 --ctmask 0x70000000" in filt[2]
    assert filt[3].endswith("--mark 0x20000000/0x70000000 -j DROP")
    assert filt[4].startswith(f"-A {CHAIN} -p tcp") and filt[4].endswith("REJECT --reject-with tcp-reset")
    assert filt[5].endswith("REJECT --reject-with icmp-port-unreachable")
    assert not any("-i lo" in r for r in mangle)  # forwarding only: loopback cannot appear


def test_ipv6_rejects_with_icmp6() -> None:
    assert chain_rules(Spec(), 6)["filter"][-1].endswith("--reject-with icmp6-port-unreachable")


def test_undecided_and_watched_connections_are_queued_again_later_then_allowed() -> None:
    mangle = _main(chain_rules(Spec(packets=16), 4)["mangle"])
    cb = "--connbytes-dir both --connbytes-mode packets"
    for lo, hi in firewall.LATER_WINDOWS:
        assert f"-A {CHAIN} -m connbytes --connbytes {lo}:{hi} {cb} -j {QCHAIN}" in mangle
    last = firewall.last_packet(Spec(packets=16))
    assert last == firewall.LATER_WINDOWS[-1][1]
    allow = (f"-A {CHAIN} -m connbytes --connbytes {last + 1}: {cb} "
             "-j CONNMARK --set-xmark 0x10000000/0x70000000")
    # the kernel's own ALLOW comes before the windows (they never match past the last one anyway)
    first_window = next(r for r in mangle if "connbytes" in r and r.endswith(QCHAIN))
    assert mangle.index(allow) < mangle.index(first_window)
    # WireGuard handshake-sized UDP (148 B init, 92 B response) at most a few per connection and hour
    hs = [r for r in mangle if "-m length" in r and "connmark" not in r]
    assert [r.split("--length ")[1].split()[0] for r in hs] == ["176", "120"]
    assert all("--hashlimit-mode srcip,srcport,dstip,dstport" in r and r.endswith(QCHAIN) for r in hs)
    v6 = [r for r in _main(chain_rules(Spec(), 6)["mangle"]) if "-m length" in r and "connmark" not in r]
    assert [r.split("--length ")[1].split()[0] for r in v6] == ["196", "140"]
    # a later window inside the first one is left out
    assert not any("64:72" in r for r in _main(chain_rules(Spec(packets=40), 4)["mangle"]))


def _u32_eval(expr: str, packet: bytes) -> bool:
    """Evaluate the subset of u32 syntax we generate (`A>>S=V`, `A&M=V`, `A>>S&M=V`, `&&`)."""
    for test in expr.split("&&"):
        lhs, value = test.split("=")
        m = re.fullmatch(r"(\d+)(?:>>(\d+))?(?:&(0x[0-9A-Fa-f]+))?", lhs)
        assert m is not None, lhs
        word = int.from_bytes(packet[int(m.group(1)):int(m.group(1)) + 4].ljust(4, b"\0"), "big")
        if m.group(2):
            word >>= int(m.group(2))
        if m.group(3):
            word &= int(m.group(3), 16)
        if word != int(value, 0):
            return False
    return True


@pytest.mark.parametrize("version", [4, 6])
def test_only_truly_payload_less_tcp_skips_the_queue(version: int) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    q = _queue_chain(chain_rules(Spec(), version)["mangle"])
    tests = [r.split("--u32 ")[1].split()[0] for r in q if "-m u32" in r]
    assert len(tests) == 11  # one per TCP data offset 5..15

    def skipped(pkt: bytes) -> bool:
        return any(_u32_eval(t, pkt) for t in tests)

    ip = IP(src="198.51.100.2", dst="203.0.113.2") if version == 4 else IPv6(src="2001:db8:1::2",
                                                                             dst="2001:db8:2::2")
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    assert skipped(bytes(ip / TCP(flags="S", options=opts)))  # handshake
    assert skipped(bytes(ip / TCP(flags="A")))  # pure ACK
    assert skipped(bytes(ip / TCP(flags="A", options=[("Timestamp", (1, 2)), ("NOP", None), ("NOP", None)])))
    for n in (1, 2, 3, 4, 100):  # any payload at all is queued, however small
        assert not skipped(bytes(ip / TCP(flags="PA") / (b"x" * n))), n
        assert not skipped(bytes(ip / TCP(flags="PA", options=[("Timestamp", (1, 2)), ("NOP", None),
                                                                 ("NOP", None)]) / (b"x" * n))), n
    assert not skipped(bytes(ip / TCP(flags="S", options=opts) / b"\x00\x0e"))  # TCP Fast Open data
    if version == 4:  # IP options: not provably empty, so queued (harmless; rare)
        assert not skipped(bytes(IP(dst="203.0.113.2", options=b"\x01" * 4) / TCP(flags="A")))


def test_fail_closed_drops_the_bypass_and_several_queues_follow_the_initiator() -> None:
    rules = chain_rules(Spec(queue_num=4, queue_count=4, fail_closed=True), 4)["mangle"]
    steer = [r for r in rules if "NFQUEUE" in r]
    assert all("--queue-bypass" not in r and "--queue-balance" not in r for r in steer)
    # one host, one queue: the original direction reads the source address, the reply the destination
    assert "-m conntrack --ctdir ORIGINAL -m u32 --u32 12&0x3=0x2 -j NFQUEUE --queue-num 6" in steer[4]
    assert "-m conntrack --ctdir REPLY -m u32 --u32 16&0x3=0x2 -j NFQUEUE --queue-num 6" in steer[5]
    assert steer[-1].endswith("-j NFQUEUE --queue-num 4")  # the safety net


def _queue_of(spec: Spec, version: int, direction: str, addr: str) -> int:
    """The queue the iptables rules send a packet to (evaluating their u32 tests by hand)."""
    import ipaddress
    word = int(ipaddress.ip_address(addr)) & 0xFFFFFFFF
    for r in chain_rules(spec, version)["mangle"]:
        if "NFQUEUE" not in r:
            continue
        if "--ctdir" not in r:
            return int(r.split("--queue-num ")[1].split()[0])
        if f"--ctdir {direction} " in r:
            test = r.split("--u32 ")[1].split()[0]
            mask, value = test.split("&")[1].split("=")
            if word & int(mask, 16) == int(value, 16):
                return int(r.split("--queue-num ")[1].split()[0])
    raise AssertionError("no queue")


def test_every_queue_gets_its_share_of_hosts_and_both_directions_agree() -> None:
    for count in (2, 3, 4):
        spec = Spec(queue_num=10, queue_count=count)
        for version, fmt in ((4, "192.168.1.{}"), (6, "fd00::{:x}")):
            hosts = [fmt.format(i) for i in range(1, 241)]
            queues = [_queue_of(spec, version, "ORIGINAL", h) for h in hosts]
            assert queues == [_queue_of(spec, version, "REPLY", h) for h in hosts]  # same host, same queue
            share = [queues.count(q) for q in range(10, 10 + count)]
            assert min(share) >= 240 // count * 0.75, (count, version, share)


def test_nft_steering_follows_the_initiator_too() -> None:
    q = firewall.nft_rules(Spec(queue_num=4, queue_count=2))["q"]
    assert "meta nfproto ipv4 ct direction original ip saddr & 0.0.0.1 == 0.0.0.1 queue num 5 bypass" in q
    assert "meta nfproto ipv6 ct direction reply ip6 daddr & ::1 == ::0 queue num 4 bypass" in q
    assert q[-1] == "queue num 4 bypass"


def test_local_hooks_skip_loopback() -> None:
    mangle = chain_rules(Spec(hooks=("forward", "input", "output")), 4)["mangle"]
    assert f"-A {CHAIN} -i lo -j RETURN" in mangle and f"-A {CHAIN} -o lo -j RETURN" in mangle


def test_registered_endpoints_bypass_the_queue_per_family() -> None:
    spec = Spec(bypass=(
        Bypass("203.0.113.2/32", (1194,)),
        Bypass("192.0.2.0/28", (), ("198.51.100.20/32",)),
        Bypass("2001:db8:2::/64"),
        Bypass("192.0.2.64/28", (), ("2001:db8:1::5/128",)),  # only v6 LAN hosts: no v4 rule at all
    ))
    v4 = _main(chain_rules(spec, 4)["mangle"])
    v6 = _main(chain_rules(spec, 6)["mangle"])
    for proto in ("udp", "tcp"):
        assert (f"-A {CHAIN} -m conntrack --ctproto {proto} --ctorigdst 203.0.113.2/32 "
                "--ctorigdstport 1194 -j RETURN") in v4
    assert (f"-A {CHAIN} -m conntrack --ctorigsrc 198.51.100.20/32 --ctorigdst 192.0.2.0/28 -j RETURN") in v4
    assert not any("192.0.2.64" in r or "2001:" in r for r in v4)
    assert v6[3] == f"-A {CHAIN} -m conntrack --ctorigdst 2001:db8:2::/64 -j RETURN"
    # bypasses come after the connmark shortcut, before the flood limit and every queue window
    first_q = min(i for i, r in enumerate(v4)
                  if "tw:flood_dropped" in r or ("connmark" not in r and r.endswith(QCHAIN)))
    assert max(i for i, r in enumerate(v4) if "--ctorigdst" in r) < first_q


def test_restore_script_declares_chains_and_adds_only_missing_jumps() -> None:
    s = restore_script(Spec(hooks=("forward", "output")), 4, [("mangle", "FORWARD"), ("filter", "OUTPUT")])
    assert s.count(f":{CHAIN} - [0:0]") == 2 and s.count(f":{QCHAIN} - [0:0]") == 1
    assert s.count("COMMIT") == 2
    mangle, filt = s.split("*filter")
    assert f"-I FORWARD 1 -j {CHAIN}" in mangle and "-I OUTPUT" not in mangle
    assert f"-I OUTPUT 1 -j {CHAIN}" in filt and "-I FORWARD" not in filt
    assert "-I " not in restore_script(Spec(), 4)


class FakeIptables:
    """Records commands; `-C` succeeds for jumps listed in `present`, `-D` removes them one at a time."""

    def __init__(self, present: dict[tuple[int, str, str], int]) -> None:
        self.present = present
        self.calls: list[list[str]] = []
        self.scripts: list[tuple[str, str]] = []

    def __call__(self, args: Sequence[str], stdin: str | None = None, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        a = list(args)
        self.calls.append(a)
        v = 6 if a[0].startswith("ip6") else 4
        rc = 0
        if "-restore" in a[0]:
            self.scripts.append((a[0], stdin or ""))
        elif "-C" in a or "-D" in a:
            key = (v, a[a.index("-t") + 1], a[a.index("-C" if "-C" in a else "-D") + 1])
            n = self.present.get(key, 0)
            rc = 0 if n else 1
            if "-D" in a and n:
                self.present[key] = n - 1
        return subprocess.CompletedProcess(a, rc, "", "")


def test_install_is_idempotent_and_remove_deletes_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "enable_accounting", lambda: None)
    fake = FakeIptables({(4, "mangle", "FORWARD"): 1, (4, "filter", "FORWARD"): 0,
                         (6, "mangle", "FORWARD"): 1, (6, "filter", "FORWARD"): 1,
                         (4, "mangle", "OUTPUT"): 1})  # a stale jump from an earlier config
    monkeypatch.setattr(firewall, "_run", fake)
    firewall.install(Spec())
    tools = [t for t, _ in fake.scripts]
    assert tools == ["iptables-restore", "ip6tables-restore"]
    v4, v6 = (s for _, s in fake.scripts)
    assert "-I FORWARD 1" in v4.split("*filter")[1] and "-I FORWARD" not in v4.split("*filter")[0]
    assert "-I " not in v6
    assert fake.present[(4, "mangle", "OUTPUT")] == 0  # stale hook cleaned
    # remove: every jump (even a duplicate made by hand), then flush and delete the chains
    fake.present = {(4, "mangle", "FORWARD"): 2, (6, "filter", "FORWARD"): 1}
    fake.calls.clear()
    firewall.remove()
    assert all(n == 0 for n in fake.present.values())
    for v, tool in ((4, "iptables"), (6, "ip6tables")):
        for table in ("mangle", "filter"):
            assert [tool, "-w", "-t", table, "-X", CHAIN] in fake.calls, v


def test_ipv6_off_removes_v6_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "enable_accounting", lambda: None)
    fake = FakeIptables({(6, "mangle", "FORWARD"): 1})
    monkeypatch.setattr(firewall, "_run", fake)
    firewall.install(Spec(ipv6=False))
    assert [t for t, _ in fake.scripts] == ["iptables-restore"]
    assert fake.present[(6, "mangle", "FORWARD")] == 0
    assert ["ip6tables", "-w", "-t", "mangle", "-X", CHAIN] in fake.calls


def test_failed_command_raises_firewall_error() -> None:
    with pytest.raises(firewall.FirewallError, match="no-such-iptables"):
        firewall._run(["no-such-iptables", "-L"])


NFT = Spec(queue_num=3, packets=12, backend="nftables",
           bypass=(Bypass("203.0.113.2/32", (1194, 51820)),
                   Bypass("2001:db8:2::/64", (), ("2001:db8:1::2/128",)),
                   Bypass("192.0.2.0/28", (), ("2001:db8:1::5/128",))))


def test_nft_rules_mirror_the_iptables_fast_path() -> None:
    r = firewall.nft_rules(NFT)
    q, v = r["queue"], r["verdict"]
    assert q[4] == "ct mark & 0x30000000 != 0 return"
    allowed = "ct mark & 0x70000000 == 0x10000000 meta l4proto udp"
    assert q[0] == (f"{allowed} ip length 176 meter tw_ha0_ip {{ ip saddr . udp sport . ip daddr . udp dport "
                    "limit rate 6/hour burst 2 packets } jump q")
    assert q[3].startswith(f"{allowed} ip6 length 100 meter tw_ha1_ip6")
    assert r["q"][-1] == "meta mark set meta mark | 0x08000000 queue num 3 bypass"
    assert f"ct packets <= {firewall.window(12)} jump q" in q
    assert "ct packets 64-72 jump q" in q and "ct packets 4096-4104 jump q" in q
    assert "ct packets > 4104 ct mark set ct mark & 0x8fffffff | 0x10000000 return" in q
    assert "ip hdrlength 5 tcp doff 5 ip length 40 return" in r["q"]
    assert "ip6 nexthdr tcp tcp doff 8 ip6 length 32 return" in r["q"]
    assert any(x.startswith("meta nfproto ipv4 ct state new meter tw_new_ip") and "over 500/second" in x
               and x.endswith('drop comment "tw:flood_dropped"') for x in q)
    # one protocol per rule so nft types proto-dst as a port; LAN restriction per family
    assert ("meta l4proto udp ct original ip daddr 203.0.113.2/32 ct original proto-dst { 1194, 51820 } "
            "return") in q
    assert "ct original ip6 saddr 2001:db8:1::2/128 ct original ip6 daddr 2001:db8:2::/64 return" in q
    assert not any("192.0.2.0" in x for x in q)  # restricted to LAN hosts of the other family only
    assert v[3] == "meta mark & 0x70000000 == 0x20000000 ct mark set ct mark & 0x8fffffff | 0x20000000"
    assert "meta mark & 0x70000000 == 0x40000000 ct mark set ct mark & 0x8fffffff | 0x40000000" in v
    assert "ct mark & 0x70000000 == 0x20000000 drop" in v
    assert v[1].endswith('counter comment "tw:bypassed_packets"')
    assert v[-2].startswith("meta l4proto tcp") and v[-2].endswith("reject with tcp reset")
    assert v[-1].endswith("reject with icmpx port-unreachable")


def test_nft_queue_options_and_ipv6_off() -> None:
    q = firewall.nft_rules(Spec(queue_num=4, queue_count=4, fail_closed=True))["q"]
    assert q[-1] == "queue num 4" and q[-11].endswith("ip saddr & 0.0.0.3 == 0.0.0.3 queue num 7")
    assert q[-18].endswith(" | 0x08000000")  # the pending bit, before the first steering rule
    q = firewall.nft_rules(Spec(ipv6=False, bypass=(Bypass("2001:db8:2::/64"),)))["queue"]
    assert "meta nfproto ipv6 return" in q and not any("2001:" in x for x in q)


def test_nft_script_replaces_the_table_atomically_per_hook() -> None:
    s = firewall.nft_script(Spec(hooks=("forward", "output"), backend="nftables"))
    lines = s.splitlines()
    assert lines[:3] == ["table inet tunnelwatch", "delete table inet tunnelwatch",
                         "table inet tunnelwatch {"]
    assert s.count("type filter hook forward priority mangle;") == 1
    assert s.count("type filter hook output priority filter;") == 1
    assert 'oifname "lo" return' in s and "hook input" not in s
    assert s.count("{") == s.count("}")


def test_nft_install_runs_one_transaction_and_clears_iptables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "enable_accounting", lambda: None)
    fake = FakeIptables({(4, "mangle", "FORWARD"): 1})  # left over from an iptables run
    monkeypatch.setattr(firewall, "_run", fake)
    firewall.install(NFT)
    nft = [c for c in fake.calls if c[0] == "nft"]
    assert nft == [["nft", "-f", "-"]]
    assert fake.present[(4, "mangle", "FORWARD")] == 0
    assert not fake.scripts  # no iptables-restore


def _probe_with(monkeypatch: pytest.MonkeyPatch, have_nft: bool, rc: int, err: str = "") -> list[list[str]]:
    calls: list[list[str]] = []

    def run(args: Sequence[str], stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        calls.append([*args, stdin or ""])
        return subprocess.CompletedProcess(list(args), rc, "", err)

    monkeypatch.setattr(firewall.shutil, "which", lambda name: "/usr/sbin/nft" if have_nft else None)
    monkeypatch.setattr(firewall, "_run", run)
    return calls


def test_backend_probe_falls_back_to_iptables(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _probe_with(monkeypatch, True, 1, "/dev/stdin:4:21-25: Error: Could not process rule: "
                        "No such file or directory\n  ct packets\n")
    backend, why = firewall.choose_backend("auto")
    assert backend == "iptables" and "No such file or directory" in why
    # the probe is one throw-away transaction with a queue rule that removes its own table
    script = calls[0][-1]
    assert "queue num" in script and script.rstrip().endswith("delete table inet tunnelwatch_probe")
    _probe_with(monkeypatch, False, 0)
    assert firewall.choose_backend("auto") == ("iptables", "nft queue expression unavailable (no nft binary)")
    _probe_with(monkeypatch, True, 0)
    assert firewall.choose_backend("auto") == ("nftables", "nft queue expression present")
    calls = _probe_with(monkeypatch, True, 1)
    assert firewall.choose_backend("iptables") == ("iptables", "configured") and not calls


def test_deeper_ports_are_queued_longer_before_the_generic_rule() -> None:
    rules = _main(chain_rules(Spec(packets=16, deep=(("tcp", 22, 96),)), 4)["mangle"])
    deep = [r for r in rules if "--ctorigdstport 22" in r]
    w = firewall.window(96)
    assert deep == [f"-A {CHAIN} -m conntrack --ctproto tcp --ctorigdstport 22 -m connbytes "
                    f"--connbytes 0:{w} --connbytes-dir both --connbytes-mode packets -j {QCHAIN}"]
    assert "0:48" in rules[rules.index(deep[0]) + 1]
    nft = firewall.nft_rules(Spec(packets=16, deep=(("tcp", 22, 96),)))["queue"]
    assert f"meta l4proto tcp ct original proto-dst 22 ct packets <= {w} jump q" in nft


def test_fail_open_is_counted_and_the_flood_limit_is_per_source() -> None:
    rules = chain_rules(Spec(new_flow_rate=200, new_flow_burst=300), 4)
    filt, mangle = rules["filter"], _main(rules["mangle"])
    # a packet still pending when it reaches the filter chain got no verdict: counted, flow remembered
    assert "-m mark --mark 0x8000000/0x8000000 -m connmark ! --mark 0x8000000/0x8000000" in filt[0]
    assert filt[0].endswith("tw:bypassed_flows -j CONNMARK --set-xmark 0x8000000/0x8000000")
    assert filt[1].endswith("tw:bypassed_packets -j MARK --set-xmark 0x0/0x8000000")
    assert firewall.MARK_PENDING & firewall.MARK_MASK == 0  # never saved as a decision
    flood = [r for r in mangle if "tw:flood_dropped" in r]
    assert flood == [f"-A {CHAIN} -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 200/sec "
                     "--hashlimit-burst 300 --hashlimit-mode srcip --hashlimit-name tw_new4 "
                     "-m comment --comment tw:flood_dropped -j DROP"]
    assert not any("tw_new" in r for r in chain_rules(Spec(new_flow_rate=0), 4)["mangle"])
    assert not any("tw_new" in r for r in firewall.nft_rules(Spec(new_flow_rate=0))["queue"])


SAVE = """*mangle
:TUNNELWATCH - [0:0]
[12:600] -A TUNNELWATCH -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 500/sec -m comment \
--comment "tw:flood_dropped" -j DROP
[3:100] -A TUNNELWATCH -m connbytes --connbytes 0:48 -j TUNNELWATCH_Q
COMMIT
*filter
[7:700] -A TUNNELWATCH -m mark --mark 0x8000000/0x8000000 -m comment --comment tw:bypassed_flows -j CONNMARK
[40:4000] -A TUNNELWATCH -m mark --mark 0x8000000/0x8000000 -m comment --comment "tw:bypassed_packets" -j MARK
COMMIT
""".replace("\\\n", "")


def test_counters_are_read_from_iptables_save_and_nft_json(monkeypatch: pytest.MonkeyPatch) -> None:
    assert firewall.parse_counters(SAVE) == {"bypassed_packets": 40, "bypassed_flows": 7, "flood_dropped": 12}

    def run(args: Sequence[str], stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        out = SAVE if args[-1] in ("mangle", "filter") else ""
        return subprocess.CompletedProcess(list(args), 0, out, "")

    monkeypatch.setattr(firewall, "_run", run)
    # both families, both tables of the text above (each table's save holds only its own lines in reality)
    assert firewall.counters(Spec(ipv6=False))["bypassed_packets"] == 80
    listing = {"nftables": [{"rule": {"comment": "tw:bypassed_flows", "expr": [{"counter": {"packets": 5}}]}},
                            {"rule": {"comment": "tw:flood_dropped", "expr": [{"counter": {"packets": 2}},
                                                                              {"drop": None}]}},
                            {"rule": {"expr": [{"counter": {"packets": 99}}]}}]}
    import json
    assert firewall.parse_nft_counters(json.dumps(listing)) == {"bypassed_packets": 0, "bypassed_flows": 5,
                                                                 "flood_dropped": 2}
    assert firewall.parse_nft_counters("not json")["bypassed_flows"] == 0


def test_limited_hosts_are_the_ones_with_an_empty_bucket(tmp_path: Path) -> None:
    for v, lines in ((4, "3 198.51.100.2:0->0.0.0.0:0 160 320000 320\n9 198.51.100.3:0->0.0.0.0:0 320000 "
                        "320000 320\n"),
                     (6, "4 2001:db8:1::2:0->:::0 0 320000 320\n")):
        d = tmp_path / str(v)
        d.mkdir()
        (d / f"tw_new{v}").write_text(lines)
    proc = {4: tmp_path / "4", 6: tmp_path / "6"}
    assert firewall.limited_hosts(Spec(), proc) == ["198.51.100.2", "2001:db8:1::2"]
    assert firewall.limited_hosts(Spec(ipv6=False), {4: tmp_path / "none", 6: tmp_path / "none"}) == []
