"""n2n: v1/v2/v3 headers, registrations answered in the same community confirmed; near-misses rejected."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, run_engine
from tunnelwatch.classify.n2n import community, parse

C, S = "192.0.2.10", "198.51.100.7"
MAC_E, MAC_S = bytes.fromhex("c2df5238f513"), bytes.fromhex("5a64a2e8f7d0")
COOKIE = b"\x11\x22\x33\x44"


def v1(msg: int, src: bytes, dst: bytes, comm: bytes = b"tw\0junk", from_sn: int = 0,
       body: bytes = b"") -> bytes:
    sock = b"\x02\x00" + struct.pack("!H", 7654) + bytes([203, 0, 113, 2]) + bytes(12)
    return bytes([1, msg, 0, from_sn]) + comm.ljust(16, b"\0")[:16] + src + dst + sock * 2 + bytes(15) + body


def v23(ver: int, pc: int, comm: bytes = b"community", cookie: bytes = COOKIE, flags: int = 0,
        body: bytes = b"") -> bytes:
    csize = 16 if ver == 2 else 20
    return bytes([ver, 2]) + struct.pack("!H", flags | pc) + comm.ljust(csize, b"\0") + cookie + MAC_E + body


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_v1_register_and_ack_confirmed() -> None:
    v = one_verdict([u(C, S, 50000, 7654, v1(1, MAC_E, bytes(6))),
                     u(S, C, 7654, 50000, v1(4, bytes(6), MAC_E, b"tw\0other", from_sn=1))])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "n2n", "confirmed")


@pytest.mark.parametrize("ver", [2, 3])
def test_v2_v3_register_super_cookie_echo_confirmed(ver: int) -> None:
    v = one_verdict([u(C, S, 50000, 7777, v23(ver, 5, body=os.urandom(40))),
                     u(S, C, 7777, 50000, v23(ver, 6, flags=0x20, body=os.urandom(30)))])
    assert (v.protocol, v.confidence) == ("n2n", "confirmed")


def test_wrong_cookie_or_other_community_is_not_confirmed() -> None:
    v = one_verdict([u(C, S, 50000, 7777, v23(2, 5)), u(S, C, 7777, 50000, v23(2, 6, cookie=b"\0\0\0\1"))])
    assert (v.protocol, v.confidence) == ("n2n", "heuristic")
    v = one_verdict([u(C, S, 50000, 7777, v23(2, 5)), u(S, C, 7777, 50000, v23(2, 6, comm=b"other"))])
    assert v.protocol != "n2n" or v.confidence == "port"


def test_one_packet_is_heuristic() -> None:
    v = one_verdict([u(C, S, 50000, 7777, v23(3, 3, body=os.urandom(100)))])
    assert (v.protocol, v.confidence) == ("n2n", "heuristic")


def test_community_field() -> None:
    assert community(b"tw\0\x7f\x00garbage") == b"tw"
    assert community(b"\0abc") == b"" and community(b"a\x01b\0") == b""


@pytest.mark.parametrize("payload", [
    bytes(DNS(id=0x0102, rd=1, qd=DNSQR(qname="example.com"))),
    b"\xc3\x00\x00\x00\x01\x08" + os.urandom(1194),  # QUIC Initial
    b"\x16\xfe\xfd\x00\x00" + os.urandom(60),  # DTLS
    b"\x01\x00\x00\x00" + os.urandom(150),  # WireGuard-like
    b"\x02\xff\x00\x05community\0\0\0\0\0\0\0" + os.urandom(20),  # ttl too large
    b"\x03\x02\x10\x05" + os.urandom(40),  # v3 with random community
])
def test_near_misses(payload: bytes) -> None:
    for _, v in run_engine([u(C, S, 50000, 7777, payload), u(S, C, 7777, 50000, os.urandom(len(payload)))]):
        assert v.protocol != "n2n"


def test_random_udp_never_n2n() -> None:
    for _ in range(200):
        p = os.urandom(120)
        if parse(p) is not None:
            assert p[0] in (1, 2, 3)
    pkts = [u(C, S, 40000 + i, 9000, bytes([1 + i % 3]) + os.urandom(100)) for i in range(30)]
    assert all(v.protocol != "n2n" for _, v in run_engine(pkts))


def test_fuzz_never_raises() -> None:
    rnd = random.Random(61)
    seeds = [v1(1, MAC_E, bytes(6)), v1(4, bytes(6), MAC_E), v23(2, 5), v23(3, 6, flags=0x20)]

    def raws() -> Iterator[bytes]:
        for i in range(2000):
            data = mutate(rnd, seeds)
            yield bytes(u(C, S, 1000 + i % 50, 7654, data) if i % 3 else u(S, C, 7654, 1000 + i % 50, data))

    assert feed_raw(["n2n"], raws()).classifier_errors == 0
