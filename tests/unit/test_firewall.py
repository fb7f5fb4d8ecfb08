"""Rule generation and the install/remove logic of firewall.py, with iptables replaced by a recorder."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from tunnelwatch import firewall
from tunnelwatch.firewall import CHAIN, Bypass, Spec, chain_rules, restore_script


def test_fast_path_rule_order() -> None:
    rules = chain_rules(Spec(queue_num=2, packets=12), 4)
    mangle, filt = rules["mangle"], rules["filter"]
    # decided connections leave before anything else; the queue rule is last
    assert mangle[0] == f"-A {CHAIN} -m connmark ! --mark 0x0/0x30000000 -j RETURN"
    assert mangle[-1] == (f"-A {CHAIN} -m connbytes --connbytes 0:12 --connbytes-dir both "
                          "--connbytes-mode packets "
                          "-j NFQUEUE --queue-num 2 --queue-bypass")
    assert "CONNMARK --save-mark" in filt[0] and "--nfmask 0x30000000 --ctmask 0x30000000" in filt[0]
    assert filt[1].endswith("--mark 0x20000000/0x30000000 -j DROP")
    assert filt[2].startswith(f"-A {CHAIN} -p tcp") and filt[2].endswith("REJECT --reject-with tcp-reset")
    assert filt[3].endswith("REJECT --reject-with icmp-port-unreachable")
    assert not any("-i lo" in r for r in mangle)  # forwarding only: loopback cannot appear


def test_ipv6_rejects_with_icmp6() -> None:
    assert chain_rules(Spec(), 6)["filter"][3].endswith("--reject-with icmp6-port-unreachable")


def test_fail_closed_drops_the_bypass_and_several_queues_balance() -> None:
    last = chain_rules(Spec(queue_num=4, queue_count=4, fail_closed=True), 4)["mangle"][-1]
    assert last.endswith("-j NFQUEUE --queue-balance 4:7")
    assert "--queue-bypass" not in last


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
    v4 = chain_rules(spec, 4)["mangle"]
    v6 = chain_rules(spec, 6)["mangle"]
    for proto in ("udp", "tcp"):
        assert (f"-A {CHAIN} -m conntrack --ctproto {proto} --ctorigdst 203.0.113.2/32 "
                "--ctorigdstport 1194 -j RETURN") in v4
    assert (f"-A {CHAIN} -m conntrack --ctorigsrc 198.51.100.20/32 --ctorigdst 192.0.2.0/28 -j RETURN") in v4
    assert not any("192.0.2.64" in r or "2001:" in r for r in v4)
    assert v6[1] == f"-A {CHAIN} -m conntrack --ctorigdst 2001:db8:2::/64 -j RETURN"
    assert len(v6) == 6  # connmark shortcut, the bypass, TCP SYN/RST/no-payload skips, the queue rule
    # bypasses come before the queue rule, after the connmark shortcut
    assert v4.index(next(r for r in v4 if "NFQUEUE" in r)) == len(v4) - 1
    # handshake/reset segments never reach userspace: they skip the queue just before it
    assert v4[-4:-2] == [f"-A {CHAIN} -p tcp --tcp-flags SYN SYN -j RETURN",
                         f"-A {CHAIN} -p tcp --tcp-flags RST RST -j RETURN"]
    assert "-m u32 ! --u32 0>>22&0x3C@12>>26&0x3C@0>>24=0:255 -j RETURN" in v4[-2]
    assert "-m u32 ! --u32 52>>26&0x3C@40>>24=0:255 -j RETURN" in v6[-2]


def test_restore_script_declares_chains_and_adds_only_missing_jumps() -> None:
    s = restore_script(Spec(hooks=("forward", "output")), 4, [("mangle", "FORWARD"), ("filter", "OUTPUT")])
    assert s.count(f":{CHAIN} - [0:0]") == 2
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
    assert q[0] == "ct mark & 0x30000000 != 0 return"
    assert q[-1] == "ct packets <= 12 queue num 3 bypass"
    # one protocol per rule so nft types proto-dst as a port; LAN restriction per family
    assert ("meta l4proto udp ct original ip daddr 203.0.113.2/32 ct original proto-dst { 1194, 51820 } "
            "return") in q
    assert "ct original ip6 saddr 2001:db8:1::2/128 ct original ip6 daddr 2001:db8:2::/64 return" in q
    assert not any("192.0.2.0" in x for x in q)  # restricted to LAN hosts of the other family only
    assert v[1] == "meta mark & 0x30000000 == 0x20000000 ct mark set ct mark & 0xcfffffff | 0x20000000"
    assert "ct mark & 0x30000000 == 0x20000000 drop" in v
    assert v[-2].startswith("meta l4proto tcp") and v[-2].endswith("reject with tcp reset")
    assert v[-1].endswith("reject with icmpx port-unreachable")


def test_nft_queue_options_and_ipv6_off() -> None:
    last = firewall.nft_rules(Spec(queue_num=4, queue_count=4, fail_closed=True))["queue"][-1]
    assert last == "ct packets <= 16 queue num 4-7 fanout"
    last = firewall.nft_rules(Spec(queue_num=4, queue_count=2))["queue"][-1]
    assert last == "ct packets <= 16 queue num 4-5 bypass,fanout"
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
    rules = chain_rules(Spec(packets=16, deep=(("tcp", 22, 96),)), 4)["mangle"]
    deep = [r for r in rules if "--ctorigdstport 22" in r]
    assert deep == [f"-A {CHAIN} -m conntrack --ctproto tcp --ctorigdstport 22 -m connbytes --connbytes 0:96 "
                    "--connbytes-dir both --connbytes-mode packets -j NFQUEUE --queue-num 0 --queue-bypass"]
    assert rules.index(deep[0]) == len(rules) - 2 and "0:16" in rules[-1]
    nft = firewall.nft_rules(Spec(packets=16, deep=(("tcp", 22, 96),)))["queue"]
    assert "meta l4proto tcp ct original proto-dst 22 ct packets <= 96 queue num 0 bypass" in nft
