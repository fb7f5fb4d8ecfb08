"""ZeroTier: HELLO identity = source address confirmed; mirrored addresses on 9993 heuristic; near-misses."""

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
from tunnelwatch.classify.zerotier import hello_version

C, S = "192.0.2.10", "198.51.100.7"
A, B = bytes.fromhex("89e92ceee5"), bytes.fromhex("778cde7190")


def header(dst: bytes, src: bytes, flags: int = 0) -> bytes:
    return os.urandom(8) + dst + src + bytes([flags]) + os.urandom(8)


def hello(src: bytes = A, dst: bytes = B, ident: bytes | None = None, version: int = 12) -> bytes:
    body = bytes([version, 1, 12, 0, 4]) + struct.pack("!Q", 1_700_000_000_000)
    body += (src if ident is None else ident) + b"\x00" + os.urandom(64) + b"\x00" + os.urandom(20)
    return header(dst, src) + b"\x01" + body


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_hello_confirmed_on_any_port() -> None:
    v = one_verdict([u(C, S, 40000, 40001, hello())])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "zerotier", "confirmed")


def test_hello_with_foreign_identity_or_cipher_not_confirmed() -> None:
    assert hello_version(hello(ident=B)) == 0
    p = bytearray(hello())
    p[18] = 0x08  # cipher suite 1: the verb would be encrypted
    assert hello_version(bytes(p)) == 0
    assert hello_version(hello(version=2)) == 0
    good = hello()
    assert hello_version(good) == 12
    for n in range(len(good)):
        hello_version(good[:n])  # never raises


def test_mirrored_addresses_on_9993_heuristic() -> None:
    pkts = []
    for _ in range(3):
        pkts += [u(C, S, 40000, 9993, header(B, A, 0x08) + os.urandom(60)),
                 u(S, C, 9993, 40000, header(A, B, 0x08) + os.urandom(60))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("zerotier", "heuristic")


def test_random_udp_on_9993_not_zerotier_beyond_port() -> None:
    pkts = []
    for _ in range(3):
        pkts += [u(C, S, 40000, 9993, os.urandom(80)), u(S, C, 9993, 40000, os.urandom(80))]
    v = one_verdict(pkts)
    assert v.protocol != "zerotier" or v.confidence == "port"


@pytest.mark.parametrize("payload", [
    bytes(DNS(id=1, rd=1, qd=DNSQR(qname="zerotier.example"))),
    b"\xc3\x00\x00\x00\x01\x08" + os.urandom(1194),
    b"\x01\x00\x00\x00" + os.urandom(144),
    os.urandom(200),
])
def test_near_misses(payload: bytes) -> None:
    for _, v in run_engine([u(C, S, 40000, 40001, payload), u(S, C, 40001, 40000, os.urandom(90))]):
        assert v.protocol != "zerotier"


def test_fuzz_never_raises() -> None:
    rnd = random.Random(63)
    seeds = [hello(), header(B, A, 0x08) + os.urandom(40)]

    def raws() -> Iterator[bytes]:
        for i in range(2000):
            data = mutate(rnd, seeds)
            yield bytes(u(C, S, 1000 + i % 50, 9993, data) if i % 3 else u(S, C, 9993, 1000 + i % 50, data))

    assert feed_raw(["zerotier"], raws()).classifier_errors == 0
