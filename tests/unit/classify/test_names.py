"""The names classifier through the real engine: TLS SNI, QUIC SNI and DNS-learned names reach flow.name,
and a domain entry of an endpoint list turns them into a `list` verdict naming how the name was seen."""

from __future__ import annotations

import random

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw
from test_dnsname import response
from test_quicname import DCID, PAYLOAD, initial
from test_tlsname import client_hello

from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.base import Verdict
from tunnelwatch.classify.endpoints import EndpointIndex, parse_yaml_list
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import parse_ip
from tunnelwatch.classify.quicname import V1

C, S, R = "10.0.0.2", "203.0.113.9", "10.0.0.1"
LIST = """
provider: catalogue
klass: vpn_tunnel
protocol: vpn_app
entries:
  - {domain: "*.sec-tunnel.com", provider: Opera VPN}
  - {domain: example.com, provider: Example, protocol: example_vpn}
"""


def run(packets: list[IP], lists: str | None = LIST) -> list[tuple[Flow, Verdict]]:
    ended: list[tuple[Flow, Verdict]] = []
    idx = EndpointIndex([parse_yaml_list(lists, "vpn-apps.yaml")]) if lists else None
    engine = Engine(load_classifiers(), on_end=lambda f, v: ended.append((f, v)), endpoints=idx)
    for i, p in enumerate(packets):
        pkt = parse_ip(bytes(p), 1000.0 + i * 0.01)
        assert pkt is not None
        engine.process(pkt)
    engine.flush()
    return ended


def tls(sni: bytes | None, sport: int = 40000, dst: str = S, split: int = 0) -> list[IP]:
    ch = client_hello(sni, pad=split)
    parts = [ch[:1400], ch[1400:]] if split else [ch]
    out = [IP(src=C, dst=dst) / TCP(sport=sport, dport=443, flags="S"),
           IP(src=dst, dst=C) / TCP(sport=443, dport=sport, flags="SA")]
    seq = 1
    for part in parts:
        out.append(IP(src=C, dst=dst) / TCP(sport=sport, dport=443, flags="PA", seq=seq) / Raw(part))
        seq += len(part)
    out.append(IP(src=dst, dst=C) / TCP(sport=443, dport=sport, flags="PA", seq=1) /
               Raw(b"\x16\x03\x03\x00\x04\x02\x00\x00\x00"))
    return out


def test_tls_sni_on_a_list() -> None:
    [(flow, v)] = run(tls(b"eu0.sec-tunnel.com"))
    assert flow.name == ("eu0.sec-tunnel.com", "sni")
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "vpn_app", "list")
    assert v.evidence == ("eu0.sec-tunnel.com (TLS SNI) is on endpoint list vpn-apps (Opera VPN), "
                          "entry *.sec-tunnel.com",)


def test_exact_entry_and_its_own_protocol() -> None:
    [(_, v)] = run(tls(b"example.com"))
    assert (v.protocol, v.confidence) == ("example_vpn", "list") and "(Example)" in v.evidence[0]
    [(_, v)] = run(tls(b"www.example.com"))  # an exact entry does not cover the names below it
    assert (v.klass, v.protocol) == ("benign", "tls")


def test_near_miss_names_stay_benign() -> None:
    for sni in (b"sec-tunnel.com.evil.example", b"notsec-tunnel.com", b"www.example.org"):
        [(flow, v)] = run(tls(sni))
        assert flow.name is not None and (v.klass, v.protocol, v.confidence) == ("benign", "tls", "confirmed")


def test_without_lists_nothing_changes() -> None:
    [(flow, v)] = run(tls(b"eu0.sec-tunnel.com"), lists=None)
    assert flow.name == ("eu0.sec-tunnel.com", "sni") and (v.klass, v.protocol) == ("benign", "tls")


def test_sni_in_the_second_segment() -> None:
    [(flow, v)] = run(tls(b"eu0.sec-tunnel.com", split=2000))
    assert flow.name == ("eu0.sec-tunnel.com", "sni") and v.confidence == "list"


def test_quic_initial_sni() -> None:
    pkts = [IP(src=C, dst=S) / UDP(sport=50000, dport=443) / Raw(initial(V1, DCID, PAYLOAD)),
            IP(src=S, dst=C) / UDP(sport=443, dport=50000) / Raw(b"\xc0" + bytes(60))]
    [(flow, v)] = run(pkts)
    assert flow.name == ("example.com", "quic-sni")
    assert (v.protocol, v.confidence) == ("example_vpn", "list") and "(QUIC SNI)" in v.evidence[0]


def test_dns_learned_name() -> None:
    ans = response("eu3.sec-tunnel.com", [(1, bytes([198, 51, 100, 20]), 300)])
    pkts = [IP(src=C, dst=R) / UDP(sport=5353 + 1, dport=53) / Raw(ans[:12]),
            IP(src=R, dst=C) / UDP(sport=53, dport=5354) / Raw(ans),
            *tls(None, dst="198.51.100.20")]
    res = run(pkts)
    (flow, v), = [(f, v) for f, v in res if f.proto == 6]
    assert flow.name == ("eu3.sec-tunnel.com", "dns")
    assert v.confidence == "list" and "(learned from DNS)" in v.evidence[0]
    # the handshake's own name wins over the DNS-learned one
    res = run([*pkts[:2], *tls(b"www.example.org", dst="198.51.100.20")])
    (flow, v), = [(f, v) for f, v in res if f.proto == 6]
    assert flow.name == ("www.example.org", "sni") and v.klass == "benign"


def test_hostile_packets_never_raise() -> None:
    rng = random.Random(14)
    seeds = [bytes(tls(b"eu0.sec-tunnel.com")[2][Raw]), initial(V1, DCID, PAYLOAD),
             response("x.example.com", [(1, b"\x01\x02\x03\x04", 60)])]
    pkts: list[IP] = []
    for i in range(600):
        s = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(0, 5)):
            s[rng.randrange(len(s))] = rng.randrange(256)
        s = s[: rng.randrange(len(s) + 1)]
        port = rng.choice([443, 53])
        up = rng.random() < 0.6
        layer = TCP if rng.random() < 0.5 else UDP
        a, b = (C, S) if up else (S, C)
        sp, dp = (40000 + i % 50, port) if up else (port, 40000 + i % 50)
        pkts.append(IP(src=a, dst=b) / layer(sport=sp, dport=dp) / Raw(bytes(s)))
    engine = Engine(load_classifiers(), endpoints=EndpointIndex([parse_yaml_list(LIST, "l.yaml")]))
    for i, p in enumerate(pkts):
        pkt = parse_ip(bytes(p), 1000.0 + i)
        assert pkt is not None
        engine.process(pkt)
    engine.flush()
    assert engine.classifier_errors == 0


def test_a_name_match_never_blocks_unless_min_confidence_is_lowered() -> None:
    import datetime as dt

    from tunnelwatch.config.runconfig import Rule
    from tunnelwatch.policy.policy import Policy
    from tunnelwatch.policy.registry import Registry

    [(flow, v)] = run(tls(b"eu0.sec-tunnel.com"))
    assert v.confidence == "list"
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    enforce = Policy(Rule(mode="enforce"))  # the default min_confidence: confirmed
    assert enforce.decide(flow, v, Registry(), now).action == "report"
    lowered = Policy(Rule(mode="enforce", min_confidence="list"))
    assert lowered.decide(flow, v, Registry(), now).action == "block"


def test_nameless_tls_gets_the_server_certificate_organisation() -> None:
    from test_tlscert import flight

    lists = LIST + "  - {organisation: Private Internet Access, provider: PIA, protocol: pia}\n"
    pkts = tls(None)
    fl = flight("Private Internet Access")
    pkts[-1] = IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="PA", seq=1) / Raw(fl[:1000])
    pkts.append(IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="PA", seq=1001) / Raw(fl[1000:]))
    [(flow, v)] = run(pkts, lists=lists)
    assert flow.name == ("Private Internet Access", "cert-org")
    assert (v.protocol, v.confidence) == ("pia", "list")
    assert "(server certificate organisation)" in v.evidence[0]
    # with an SNI the handshake name stays the flow's name: the certificate is not read
    pkts = tls(b"www.example.org")
    pkts[-1] = IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="PA", seq=1) / Raw(fl)
    [(flow, v)] = run(pkts, lists=lists)
    assert flow.name == ("www.example.org", "sni") and v.klass == "benign"


def test_a_dns_answer_names_only_the_flows_of_the_host_that_asked() -> None:
    ans = response("eu3.sec-tunnel.com", [(1, bytes([198, 51, 100, 20]), 300)])
    other = "10.0.0.3"
    pkts = [IP(src=C, dst=R) / UDP(sport=5354, dport=53) / Raw(ans[:12]),
            IP(src=R, dst=C) / UDP(sport=53, dport=5354) / Raw(ans),
            *tls(None, dst="198.51.100.20")]
    for p in pkts[2:]:  # the same connection, but from another LAN host
        if p[IP].src == C:
            p[IP].src = other
        else:
            p[IP].dst = other
    res = run(pkts)
    (flow, v), = [(f, v) for f, v in res if f.proto == 6]
    assert flow.name is None and v.klass == "benign"


def test_waiting_for_the_rest_of_a_name_is_bounded() -> None:
    """A QUIC hello whose second half never comes: the classifier gives up after a few packets, so the
    flow is not kept undecided for it."""
    from test_quicname import CRYPTO_FRAME

    first = b"\x06\x00\x40\x3c" + CRYPTO_FRAME[4:64]  # offset 0, 60 bytes of the hello: no SNI yet
    pkts = [IP(src=C, dst=S) / UDP(sport=50000, dport=443) / Raw(initial(V1, DCID, first + bytes(1100)))]
    pkts += [IP(src=S, dst=C) / UDP(sport=443, dport=50000) / Raw(b"\xc0" + bytes(40)) for _ in range(12)]
    engine = Engine(load_classifiers(["names"]), budget=100)
    decided_at = 0
    for i, p in enumerate(pkts, 1):
        pkt = parse_ip(bytes(p), 1000.0 + i * 0.01)
        assert pkt is not None
        flow = engine.process(pkt)
        if flow.done and not decided_at:
            decided_at = i
    assert 0 < decided_at <= 10 and flow.name is None
