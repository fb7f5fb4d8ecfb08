"""ICMP tunnels: ptunnel's magic, whole IP packets in echo data, replies that do not echo; pings never."""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict
from tunnelwatch.classify.icmptunnel import PTUNNEL_MAGIC, ip_packet, ping_pattern, ptunnel_flags

C, S = "192.0.2.10", "198.51.100.9"
C6, S6 = "2001:db8::10", "2001:db8:1::9"
USER, PROXY = 1 << 30, 1 << 31


def echo(src: str, dst: str, data: bytes, reply: bool = False, ident: int = 0x1234, seq: int = 1) -> IP:
    return IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=ident, seq=seq) / Raw(data)


def pt(flag: int, state: int = 2, payload: bytes = b"") -> bytes:
    hdr = struct.pack("!IIIII HH", 0x0A000001, 22, flag | state, 0, len(payload), 1, 7)
    return PTUNNEL_MAGIC + hdr + payload


def linux_ping(size: int = 56) -> bytes:
    return struct.pack("<QQ", int(time.time()), 12345) + bytes(i & 0xFF for i in range(16, size))


def inner_ipv4(size: int = 84) -> bytes:
    return bytes(IP(src="10.95.1.1", dst="10.95.1.2") / UDP(sport=1, dport=2) / Raw(os.urandom(size - 28)))


def test_ptunnel_both_ways_is_confirmed() -> None:
    v = one_verdict([echo(C, S, pt(USER, 0)), echo(S, C, pt(PROXY, 1), reply=True),
                     echo(C, S, pt(USER, 2, b"GET / HTTP/1.0\r\n\r\n"), seq=2)])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "ptunnel", "confirmed")
    assert any("0xD5200880" in e for e in v.evidence)


def test_ptunnel_one_way_is_heuristic() -> None:
    v = one_verdict([echo(C, S, pt(USER, 0)), echo(C, S, pt(USER, 2, b"x" * 40), seq=2)])
    assert (v.protocol, v.confidence) == ("ptunnel", "heuristic")


def test_ptunnel_header_must_be_consistent() -> None:
    assert ptunnel_flags(pt(USER)) == USER
    assert ptunnel_flags(pt(USER | PROXY)) == -1           # both flags at once
    assert ptunnel_flags(pt(USER, state=9)) == -1          # unknown state
    bad_len = PTUNNEL_MAGIC + struct.pack("!IIIII HH", 0, 0, USER, 0, 500, 0, 0)
    assert ptunnel_flags(bad_len) == -1                    # claims more data than carried
    assert ptunnel_flags(PTUNNEL_MAGIC + b"\0" * 10) == -1


def test_ip_in_icmp_both_ways_is_confirmed_one_way_heuristic() -> None:
    v = one_verdict([echo(C, S, inner_ipv4()), echo(S, C, inner_ipv4(120), reply=True)])
    assert (v.protocol, v.confidence) == ("icmp_tunnel", "confirmed")
    v = one_verdict([echo(C, S, inner_ipv4()), echo(C, S, inner_ipv4(200), seq=2)])
    assert (v.protocol, v.confidence) == ("icmp_tunnel", "heuristic")


def test_inner_ip_header_must_verify() -> None:
    good = inner_ipv4()
    assert ip_packet(good)
    broken = bytearray(good)
    broken[10] ^= 0xFF  # header checksum
    assert not ip_packet(bytes(broken))
    assert not ip_packet(good + b"\0")  # total length no longer equals the data length
    assert ip_packet(bytes(IPv6(src=C6, dst=S6) / UDP() / Raw(b"abc")))


def test_replies_that_do_not_echo_the_request_are_heuristic() -> None:
    pkts = []
    for seq in range(1, 5):
        pkts += [echo(C, S, os.urandom(100), seq=seq), echo(S, C, os.urandom(300), reply=True, seq=seq)]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("icmp_tunnel", "heuristic")
    assert any("other than their request" in e for e in v.evidence)


@pytest.mark.parametrize("data", [
    linux_ping(), linux_ping(1400), linux_ping(8),
    b"abcdefghijklmnopqrstuvwabcdefghi",                              # Windows
    struct.pack("<QQ", 1, 2) + bytes.fromhex("deadbeef01020304") * 6,  # ping -p deadbeef01020304
    bytes(56),                                                         # zero fill (fping, busybox)
])
def test_ordinary_pings_are_not_flagged(data: bytes) -> None:
    pkts = []
    for seq in range(1, 6):
        pkts += [echo(C, S, data, seq=seq), echo(S, C, data, reply=True, seq=seq)]
    v = one_verdict(pkts)
    assert not v.flagged
    assert ping_pattern(data)


def test_random_payload_echoed_faithfully_is_not_flagged() -> None:
    pkts = []
    for seq in range(1, 8):
        d = os.urandom(64)
        pkts += [echo(C, S, d, seq=seq), echo(S, C, d, reply=True, seq=seq)]
    assert not one_verdict(pkts).flagged


def test_icmp_errors_quoting_ip_headers_are_not_tunnels() -> None:
    quoted = bytes(IP(src=C, dst=S) / UDP(sport=4000, dport=33434))[:28]
    pkts = [IP(src=S, dst=C) / ICMP(type=3, code=3) / Raw(quoted) for _ in range(8)]
    assert not one_verdict(pkts).flagged


def test_ipv6_ptunnel_style_and_ping6() -> None:
    v = one_verdict([IPv6(src=C6, dst=S6) / ICMPv6EchoRequest(id=1, seq=1) / Raw(pt(USER, 0)),
                     IPv6(src=S6, dst=C6) / ICMPv6EchoReply(id=1, seq=1) / Raw(pt(PROXY, 1))])
    assert (v.protocol, v.confidence) == ("ptunnel", "confirmed")
    d = linux_ping()
    v = one_verdict([IPv6(src=C6, dst=S6) / ICMPv6EchoRequest(id=1, seq=1) / Raw(d),
                     IPv6(src=S6, dst=C6) / ICMPv6EchoReply(id=1, seq=1) / Raw(d)])
    assert not v.flagged


def test_hostile_icmp_never_breaks_the_classifier() -> None:
    rnd = random.Random(5)
    seeds = [bytes(ICMP(type=8, id=1, seq=1) / Raw(pt(USER, 0, b"abc"))), bytes(ICMP(type=0) / inner_ipv4()),
             bytes(ICMP(type=8) / Raw(linux_ping()))]
    raws = []
    for i in range(400):
        peer = f"198.51.100.{i % 40}"  # many short flows, so the budget never hides later packets
        src, dst = (C, peer) if i % 2 else (peer, C)
        raws.append(bytes(IP(src=src, dst=dst, proto=1) / Raw(mutate(rnd, seeds).ljust(4, b"\0"))))
    engine = feed_raw(["icmptunnel"], raws)
    assert engine.classifier_errors == 0
