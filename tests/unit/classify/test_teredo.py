"""Teredo: qualification (nonce echoed) confirmed; lone datagrams heuristic on 3544 only; near-misses."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, IPv6
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.teredo import parse

C, S = "192.0.2.10", "198.51.100.7"
NONCE = bytes.fromhex("b11b3fea46a9afe9")
AUTH = b"\x00\x01\x00\x00" + NONCE + b"\x00"
ORIGIN = b"\x00\x00" + struct.pack("!H", 52513 ^ 0xFFFF) + bytes(b ^ 0xFF for b in bytes([192, 0, 2, 10]))
RS = bytes(IPv6(src="fe80::ffff:ffff:fffe", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
RA = bytes(IPv6(src="fe80::8000:f227:3d77:e3b3", dst="fe80::ffff:ffff:fffe", hlim=255) / ICMPv6ND_RA())
SOLICIT = AUTH + RS
ADVERT = AUTH + ORIGIN + RA
BUBBLE = bytes(IPv6(src="2001:0:c633:6402::1", dst="2001:0:c633:6402::2", nh=59, plen=0))


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_parse() -> None:
    assert parse(SOLICIT) == (
        "authentication indicator + IPv6 header whose payload length fills the datagram", NONCE)
    got = parse(ADVERT)
    assert got is not None and got[1] == NONCE
    assert parse(BUBBLE) == ("IPv6 header whose payload length fills the datagram", b"")
    assert parse(SOLICIT + b"\x00") is None and parse(AUTH + RS[:39]) is None


def test_qualification_is_confirmed_tunnel() -> None:
    v = one_verdict([u(C, S, 52513, 3544, SOLICIT), u(S, C, 3544, 52513, ADVERT)])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "teredo", "confirmed")
    assert v.evidence[1] == "answer with the same nonce"
    assert one_verdict([u(C, S, 52513, 3544, SOLICIT)]).confidence == "heuristic"
    other = b"\x00\x01\x00\x00" + os.urandom(8) + b"\x00" + ORIGIN + RA
    assert one_verdict([u(C, S, 52513, 3544, SOLICIT), u(S, C, 3544, 52513, other)]).confidence == "heuristic"


def test_bare_ipv6_between_peers_needs_the_answer() -> None:
    assert one_verdict([u(C, S, 40000, 41000, BUBBLE)]).klass == "unknown"
    v = one_verdict([u(C, S, 40000, 41000, BUBBLE), u(S, C, 41000, 40000, BUBBLE)])
    assert (v.protocol, v.confidence) == ("teredo", "confirmed")


def test_near_misses() -> None:
    bad_len = RS[:4] + struct.pack("!H", 99) + RS[6:]
    for p in (bad_len, b"\x00\x01\x00\x00" + os.urandom(60), os.urandom(60), b"\x45" + RS[1:]):
        vs = verdicts([u(C, S, 40000, 3544, p)])
        assert all(v.protocol != "teredo" or v.confidence == "port" for v in vs)


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 52513, 3544, mutate(rnd, [SOLICIT, ADVERT, BUBBLE]))) for _ in range(400)]
    assert feed_raw(["teredo"], raws).classifier_errors == 0
