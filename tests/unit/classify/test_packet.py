"""Hand parser: header facts right for every transport; hostile input gives None, never an exception."""

from __future__ import annotations

import os
import random

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import GRE
from scapy.packet import Raw

from tunnelwatch.classify.packet import addr_text, parse_ip, transport_name


def test_ipv4_udp_fields() -> None:
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1234, dport=1194) / Raw(b"hello"))
    p = parse_ip(raw, 5.0)
    assert p is not None
    assert (addr_text(p.src), addr_text(p.dst), p.sport, p.dport, p.proto) == ("10.0.0.1", "10.0.0.2", 1234,
                                                                              1194, 17)
    assert p.payload == b"hello" and p.length == len(raw) and p.ts == 5.0 and p.version == 4


def test_ipv4_with_options_and_tcp_options() -> None:
    raw = bytes(IP(src="1.1.1.1", dst="2.2.2.2", options=b"\x01\x01\x01\x00")
                / TCP(sport=5, dport=443, flags="PA", options=[("MSS", 1460), ("NOP", None)]) / Raw(b"xyz"))
    p = parse_ip(raw)
    assert p is not None and p.payload == b"xyz" and p.tcp_flags & 0x08


def test_ipv6_extension_headers_are_walked() -> None:
    raw = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=2)
                / Raw(b"ab"))
    p = parse_ip(raw)
    assert p is not None and p.proto == 17 and p.payload == b"ab" and addr_text(p.src) == "2001:db8::1"


def test_ipv6_non_first_fragment_has_no_ports() -> None:
    raw = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(offset=100, nh=17)
                / Raw(b"x" * 16))
    p = parse_ip(raw)
    assert p is not None and p.frag and (p.sport, p.dport) == (0, 0)


def test_ipv4_non_first_fragment() -> None:
    raw = bytes(IP(src="1.1.1.1", dst="2.2.2.2", frag=50, proto=17) / Raw(b"y" * 30))
    p = parse_ip(raw)
    assert p is not None and p.frag and p.payload == b""


def test_esp_ah_gre_icmp_bodies() -> None:
    esp = parse_ip(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / ESP(spi=0x1234, seq=1, data=b"z" * 20)))
    assert esp is not None and transport_name(esp.proto) == "esp" and esp.payload[:4] == b"\x00\x00\x12\x34"
    ah = parse_ip(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / AH(spi=7, seq=1, nh=4, icv=b"\x00" * 12)))
    assert ah is not None and ah.proto == 51
    gre = parse_ip(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / GRE(proto=0x0800) / IP()))
    assert gre is not None and gre.proto == 47 and gre.payload[2:4] == b"\x08\x00"
    icmp = parse_ip(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=8) / Raw(b"ping")))
    assert icmp is not None and icmp.proto == 1 and icmp.payload[0] == 8


def test_truncated_and_garbage_never_raise() -> None:
    rng = random.Random(7)
    good = [bytes(IP(dst="1.2.3.4") / TCP() / Raw(b"q" * 40)),
            bytes(IPv6(dst="::1") / IPv6ExtHdrHopByHop() / UDP() / Raw(b"q" * 40))]
    for g in good:
        for cut in range(len(g)):
            parse_ip(g[:cut])
    for _ in range(3000):
        buf = bytearray(os.urandom(rng.randrange(0, 80)))
        if buf and rng.random() < 0.7:
            buf[0] = rng.choice((0x45, 0x46, 0x4F, 0x60, 0x40))
        parse_ip(bytes(buf), 0.0, rng.randrange(0, 3))
    assert parse_ip(b"") is None
    assert parse_ip(b"\x45" + b"\x00" * 10) is None
    assert parse_ip(b"\x50" + b"\x00" * 40) is None  # IP version 5
    # IHL below 5 words is invalid
    assert parse_ip(b"\x44" + b"\x00" * 39) is None


def test_ipv4_total_length_beyond_buffer_uses_buffer() -> None:
    raw = bytearray(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=1, dport=2) / Raw(b"abcd")))
    raw[2:4] = (9000).to_bytes(2, "big")
    p = parse_ip(bytes(raw))
    assert p is not None and p.payload == b"abcd"
