"""Policy decisions (every branch, clock injected) and the strict run configuration they come from."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pytest

from tunnelwatch.classify.base import Verdict
from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import UDP, Packet
from tunnelwatch.config.runconfig import ConfigError, Rule, parse_config
from tunnelwatch.policy.policy import Decision, Policy
from tunnelwatch.policy.registry import Registry, parse_registry

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
OVPN = Verdict("vpn_tunnel", "openvpn", "confirmed", ("hard reset both ways",))
WG_HEUR = Verdict("vpn_tunnel", "wireguard", "heuristic", ())
SIP = Verdict("voip", "sip", "confirmed", ())


def _flow(src: str = "198.51.100.2", dst: str = "203.0.113.2", dport: int = 1194) -> Flow:
    pkt = Packet(0.0, 4, socket.inet_aton(src), socket.inet_aton(dst), UDP, 40000, dport, 100, b"x")
    return Flow(flow_key(pkt), pkt)


def _policy(text: str) -> Policy:
    return Policy.from_config(parse_config(text))


ENFORCE = "policy:\n  klass: {vpn_tunnel: enforce}\n"


def test_unregistered_confirmed_tunnel_is_blocked_in_enforce_mode() -> None:
    assert _policy(ENFORCE).decide(_flow(), OVPN, Registry(), NOW) == Decision("block", "unregistered")


@pytest.mark.parametrize("verdict", [
    Verdict("benign", "tls", "confirmed", ()),
    Verdict("unknown", "unknown", "heuristic", ()),
    Verdict("benign", "dns", "port", ()),
])
def test_benign_and_unknown_flows_always_pass(verdict: Verdict) -> None:
    assert _policy(ENFORCE).decide(_flow(), verdict, Registry(), NOW).action == "allow"


def test_default_mode_is_monitor_and_only_reports() -> None:
    d = Policy(Rule()).decide(_flow(), OVPN, Registry(), NOW)
    assert d == Decision("report", "monitor mode")


def test_registered_flow_passes_and_names_its_registration() -> None:
    reg = Registry(parse_registry(
        "registrations:\n  - id: PTA-1\n    protocols: [openvpn]\n    servers: [203.0.113.0/24]\n"))
    d = _policy(ENFORCE).decide(_flow(), OVPN, reg, NOW)
    assert d == Decision("allow", "registered PTA-1", registration="PTA-1")
    # a registration for another protocol does not cover this one
    reg = Registry(parse_registry("registrations:\n  - id: PTA-2\n    protocols: [ipsec]\n"
                                  "    servers: [203.0.113.0/24]\n"))
    assert _policy(ENFORCE).decide(_flow(), OVPN, reg, NOW).action == "block"


def test_below_min_confidence_is_reported_not_blocked() -> None:
    d = _policy(ENFORCE).decide(_flow(), WG_HEUR, Registry(), NOW)
    assert d == Decision("report", "confidence heuristic below confirmed")
    p = _policy("policy:\n  klass: {vpn_tunnel: {mode: enforce, min_confidence: heuristic}}\n")
    assert p.decide(_flow(), WG_HEUR, Registry(), NOW).action == "block"
    # a port-only guess never reaches heuristic
    port = Verdict("vpn_tunnel", "openvpn", "port", ())
    assert p.decide(_flow(), port, Registry(), NOW).action == "report"


def test_grace_reports_until_the_end_of_its_date_then_enforces() -> None:
    p = _policy("policy:\n  protocol:\n    openvpn: {mode: grace, until: 2026-06-01}\n")
    assert p.decide(_flow(), OVPN, Registry(), NOW).action == "report"
    assert "grace until 2026-06-02T00:00" in p.decide(_flow(), OVPN, Registry(), NOW).reason
    later = dt.datetime(2026, 6, 2, 0, 0, tzinfo=dt.UTC)
    assert p.decide(_flow(), OVPN, Registry(), later).action == "block"


def test_protocol_rule_wins_over_klass_rule_and_reject_is_carried() -> None:
    p = _policy("policy:\n  klass: {vpn_tunnel: monitor}\n  protocol:\n"
                "    openvpn: {mode: enforce, action: reject}\n")
    assert p.decide(_flow(), OVPN, Registry(), NOW) == Decision("block", "unregistered", reject=True)
    wg = Verdict("vpn_tunnel", "wireguard", "confirmed", ())
    assert p.decide(_flow(), wg, Registry(), NOW).action == "report"


def test_voip_follows_its_own_klass_rule() -> None:
    assert _policy(ENFORCE).decide(_flow(dport=5060), SIP, Registry(), NOW).action == "report"


def test_example_config_in_the_repo_is_valid() -> None:
    path = Path(__file__).resolve().parents[3] / "config" / "tunnelwatch.yaml"
    cfg = parse_config(path.read_text(), str(path))
    # shipped neutral: nothing is blocked until the operator (or the provisioning file) asks for it
    assert all(rule.mode == "monitor" for rule in cfg.klass.values()) and not cfg.protocol
    assert cfg.registry is not None and cfg.registry.name == "registry.yaml"
    assert cfg.backend == "auto" and cfg.voip.bulk_calls == 0  # bulk VoIP is off unless asked for


def test_config_defaults() -> None:
    cfg = parse_config("log: {level: info}\n")
    got = (cfg.queue_num, cfg.packets, cfg.fail_closed, cfg.hooks, cfg.ipv6)
    assert got == (0, 16, False, ("forward",), True)
    assert cfg.default == Rule("monitor", None, "confirmed", "drop")


@pytest.mark.parametrize(("text", "where", "words"), [
    ("queue: {num: 0, pakets: 16}\n", "c.yaml:1:17:", "unknown key 'pakets'"),
    ("queue:\n  packets: sixteen\n", "c.yaml:2:12:", "queue.packets must be an integer"),
    ("queue:\n  packets: 0\n", "c.yaml:2:12:", "between 1 and 1000"),
    ("queue:\n  fail_closed: 1\n", "c.yaml:2:16:", "true or false"),
    ("firewall: {hooks: [forward, prerouting]}\n", "c.yaml:1:29:", "must be one of forward, input, output"),
    ("policy:\n  klass: {vpn: enforce}\n", "c.yaml:2:11:", "unknown klass 'vpn'"),
    ("policy:\n  klass: {vpn_tunnel: block}\n", "c.yaml:2:23:", "must be one of monitor, enforce, grace"),
    ("policy:\n  klass: {vpn_tunnel: grace}\n", "c.yaml:2:23:", "grace needs a date"),
    ("policy:\n  protocol:\n    openvpn: {mode: grace, until: soon}\n", "c.yaml:3:35:", "must be a date"),
    ("policy:\n  default: {action: kill}\n", "c.yaml:2:21:", "drop, reject"),
    ("queue: {num: 1\n", "c.yaml:", "YAML syntax"),
    ("- just\n- a list\n", "c.yaml:1:1:", "must be a mapping"),
    ("queue: {num: 1}\nqueue: {num: 2}\n", "c.yaml:2:1:", "duplicate key 'queue'"),
    ("", "c.yaml:1:1:", "empty configuration"),
])
def test_config_errors_are_located(text: str, where: str, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "c.yaml")
    msg = "\n".join(ei.value.problems)
    assert where in msg and words in msg, msg


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config("queue: {packets: -1, maxlen: x}\nlog: {level: loud}\n", "c.yaml")
    assert len(ei.value.problems) == 3


RTP = Verdict("voip", "rtp", "confirmed", ("RTP both ways",))
RTP_HEUR = Verdict("voip", "rtp", "heuristic", ())
BULK = "policy:\n  voip: {bulk_calls: 3, bulk_action: %s, bulk_window: 60}\n"


def _calls(p: Policy, n: int, src: str = "198.51.100.2", at: dt.datetime = NOW, first_port: int = 20000,
           verdict: Verdict = RTP) -> list[Decision]:
    """n RTP media flows (one per call) from `src` to distinct ports, decided at `at`."""
    return [p.decide(_flow(src, dport=first_port + 2 * i), verdict, Registry(), at) for i in range(n)]


def test_bulk_voip_is_off_by_default_and_voip_is_only_reported() -> None:
    p = _policy("policy:\n  klass: {voip: monitor}\n")
    assert {d.action for d in _calls(p, 50)} == {"report"}
    assert not any(d.bulk for d in _calls(p, 5, first_port=30000))


def test_more_than_k_concurrent_calls_from_one_host_are_reported() -> None:
    p = _policy(BULK % "report")
    ds = _calls(p, 5)
    assert [d.bulk for d in ds] == [False, False, False, True, True]
    assert [d.action for d in ds] == ["report"] * 5
    assert ds[3].reason == "bulk VoIP: 4 concurrent calls from 198.51.100.2 (limit 3)"
    assert ds[4].reason.startswith("bulk VoIP: 5 concurrent calls")
    assert [d.calls for d in ds] == [1, 2, 3, 4, 5]


def test_bulk_block_blocks_new_voip_flows_of_that_host_only() -> None:
    p = _policy(BULK % "block")
    assert [d.action for d in _calls(p, 4)] == ["report", "report", "report", "block"]
    # the host's new signalling is blocked too while it is above the limit
    assert p.decide(_flow(dport=5060), SIP, Registry(), NOW).action == "block"
    # another LAN host with the same number of calls as the limit is untouched
    assert [d.action for d in _calls(p, 3, src="198.51.100.3")] == ["report"] * 3
    # the same flow decided twice (e.g. after a worker restart) is one call, not two
    p2 = _policy(BULK % "block")
    same = [p2.decide(_flow(dport=20000), RTP, Registry(), NOW) for _ in range(10)]
    assert {d.action for d in same} == {"report"}


def test_calls_whose_end_is_never_seen_count_for_at_most_bulk_window() -> None:
    p = _policy(BULK % "block")
    assert not any(d.bulk for d in _calls(p, 3))
    later = NOW + dt.timedelta(seconds=59)
    assert _calls(p, 1, at=later, first_port=40000)[0].action == "block"  # 4 still active
    much_later = NOW + dt.timedelta(seconds=61)
    # the first three calls aged out: 2 remain (the 4th and this one)
    d = _calls(p, 1, at=much_later, first_port=41000)[0]
    assert d.action == "report" and not d.bulk


def test_bulk_block_still_needs_the_voip_minimum_confidence() -> None:
    p = _policy("policy:\n  klass: {voip: {mode: monitor, min_confidence: confirmed}}\n"
                "  voip: {bulk_calls: 1, bulk_action: block}\n")
    ds = _calls(p, 3, verdict=RTP_HEUR)
    assert [d.action for d in ds] == ["report"] * 3 and ds[2].bulk
    assert "confidence heuristic below confirmed" in ds[2].reason


def test_rtcp_and_tunnels_do_not_count_as_calls_and_registered_media_passes() -> None:
    p = _policy(BULK % "block" + "  klass: {vpn_tunnel: monitor}\n")
    rtcp = Verdict("voip", "rtcp", "confirmed", ())
    assert not any(d.bulk for d in _calls(p, 10, verdict=rtcp))
    assert not any(d.bulk for d in _calls(p, 10, verdict=OVPN, first_port=30000))
    reg = Registry(parse_registry("registrations:\n  - id: CC-1\n    servers: [203.0.113.0/24]\n"))
    assert {p.decide(_flow(dport=50000 + i), RTP, reg, NOW).action for i in range(10)} == {"allow"}


def _flows(n: int, src: str = "198.51.100.2", first_port: int = 20000) -> list[Flow]:
    return [_flow(src, dport=first_port + 2 * i) for i in range(n)]


def test_calls_ending_lower_the_concurrent_count() -> None:
    p = _policy(BULK % "block")
    flows = _flows(3)
    assert [p.decide(f, RTP, Registry(), NOW).calls for f in flows] == [1, 2, 3]
    for f in flows[:2]:
        p.ended(f)
    # two calls hung up: the host has one active call, so a fourth and fifth are not bulk
    more = _flows(2, first_port=30000)
    ds = [p.decide(f, RTP, Registry(), NOW) for f in more]
    assert [d.calls for d in ds] == [2, 3] and not any(d.bulk for d in ds)
    assert p.active_calls(NOW) == {"198.51.100.2": 3}
    # a fourth concurrent call crosses the limit and is blocked
    d = p.decide(_flow(dport=40000), RTP, Registry(), NOW)
    assert d.bulk and d.action == "block" and d.calls == 4
    # ending a flow that was never a counted call changes nothing; ending one twice counts once
    p.ended(_flow(dport=5060))
    p.ended(more[0])
    p.ended(more[0])
    assert p.active_calls(NOW) == {"198.51.100.2": 3}


def test_messenger_call_counts_once_per_socket_until_its_last_flow_ends() -> None:
    p = _policy(BULK % "report")
    wa = Verdict("voip", "whatsapp_call", "confirmed", ("attribute type 0x4000",))
    # one WhatsApp call: the same local socket probes several relays
    relays = [_flow(dst=f"157.240.0.{i}", dport=3478) for i in range(1, 6)]
    assert [p.decide(f, wa, Registry(), NOW).calls for f in relays] == [1] * 5
    for f in relays[:4]:
        p.ended(f)
    assert p.active_calls(NOW) == {"198.51.100.2": 1}
    p.ended(relays[4])
    assert p.active_calls(NOW) == {}


def test_a_call_flood_stays_bounded_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import tunnelwatch.policy.policy as policy_mod

    monkeypatch.setattr(policy_mod, "_MAX_TRACKED", 500)
    p = _policy(BULK % "report")
    for i in range(5000):  # 5000 calls from many hosts, none ever ending
        src = f"10.{i // 250 % 250}.{i % 250}.1"
        p.decide(_flow(src, dport=20000 + i % 20000), RTP, Registry(), NOW)
    c = p.calls
    assert len(c.order) <= 501 and sum(len(v) for v in c.by_host.values()) <= 501
    assert len(c.flows) <= 2 * 500 + 1 and len(c.members) <= 501
    # and with ends reported, nothing is left behind
    p2 = _policy(BULK % "report")
    for i in range(2000):
        f = _flow(dport=20000 + i)
        p2.decide(f, RTP, Registry(), NOW)
        p2.ended(f)
    assert not p2.calls.by_host and not p2.calls.flows and not p2.calls.members


@pytest.mark.parametrize(("text", "where", "words"), [
    ("policy:\n  voip: {bulk_calls: -1}\n", "c.yaml:2:22:", "between 0 and 100000"),
    ("policy:\n  voip: {bulk_calls: 4, bulk_action: drop}\n", "c.yaml:2:38:", "one of report, block"),
    ("policy:\n  voip: {bulk_window: 1}\n", "c.yaml:2:23:", "between 10 and 86400"),
    ("policy:\n  voip: {bulk: 4}\n", "c.yaml:2:10:", "unknown key 'bulk' in policy.voip"),
    ("firewall: {backend: nft}\n", "c.yaml:1:21:", "one of auto, iptables, nftables"),
])
def test_voip_config_errors_are_located(text: str, where: str, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "c.yaml")
    msg = "\n".join(ei.value.problems)
    assert where in msg and words in msg, msg
