"""Benign recognisers: DNS, TLS, HTTP, QUIC, NTP are recognised and outrank bare port hints."""

from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.ntp import NTP
from scapy.packet import Raw

from support import one_verdict

C, S = "192.0.2.10", "198.51.100.7"


def test_dns_is_benign_confirmed() -> None:
    v = one_verdict([IP(src=C, dst=S) / UDP(sport=40000, dport=53) / DNS(qd=DNSQR(qname="example.com"))])
    assert (v.klass, v.protocol, v.confidence) == ("benign", "dns", "confirmed")


def test_dns_on_the_openvpn_port_beats_the_port_hint() -> None:
    v = one_verdict([IP(src=C, dst=S) / UDP(sport=5353, dport=1194) / DNS(qd=DNSQR(qname="a.local"))])
    assert v.klass == "benign"


def test_tls_client_hello_and_http() -> None:
    hello = bytes.fromhex("16030100c8010000c40303") + bytes(32)
    v = one_verdict([IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="PA") / Raw(hello)])
    assert (v.klass, v.protocol) == ("benign", "tls")
    v = one_verdict([IP(src=C, dst=S) / TCP(sport=40000, dport=80, flags="PA")
                     / Raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")])
    assert (v.klass, v.protocol) == ("benign", "http")


def test_quic_initial_and_ntp() -> None:
    initial = b"\xc3\x00\x00\x00\x01\x08" + bytes(1194)
    v = one_verdict([IP(src=C, dst=S) / UDP(sport=40000, dport=443) / Raw(initial)])
    assert (v.klass, v.protocol) == ("benign", "quic")
    v = one_verdict([IP(src=C, dst=S) / UDP(sport=123, dport=123) / NTP()])
    assert (v.klass, v.protocol) == ("benign", "ntp")


def test_random_udp_is_unknown_not_flagged() -> None:
    v = one_verdict([IP(src=C, dst=S) / UDP(sport=40000, dport=7777) / Raw(bytes(range(40)))] * 5)
    assert v.klass in ("unknown", "benign")
