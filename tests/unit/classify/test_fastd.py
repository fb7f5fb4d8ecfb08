"""fastd: handshake TLV parsing, init/response key cross-check (plain and L2TP-wrapped), near-misses."""

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
from tunnelwatch.classify.fastd import parse

C, S = "192.0.2.10", "198.51.100.7"
KEY_C, KEY_S = os.urandom(32), os.urandom(32)
L2TP = b"\xc8\x03\x00\x0c" + bytes(8)


def rec(rtype: int, value: bytes) -> bytes:
    return struct.pack("<HH", rtype, len(value)) + value


def handshake(htype: int, sender: bytes, recipient: bytes = b"", wrap: bool = False) -> bytes:
    tlvs = rec(0, bytes([htype])) + rec(3, b"\x01") + rec(4, b"\x01") + rec(13, b"v22")
    tlvs += rec(5, b"ec25519-fhmqvc") + rec(6, sender)
    if recipient:
        tlvs += rec(7, recipient) + rec(8, os.urandom(32)) + rec(10, os.urandom(32))
    pkt = b"\x01\x00" + struct.pack("!H", len(tlvs)) + tlvs
    return (L2TP if wrap else b"") + pkt


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


@pytest.mark.parametrize("wrap", [False, True])
def test_init_response_confirmed(wrap: bool) -> None:
    v = one_verdict([u(C, S, 50000, 10000, handshake(1, KEY_C)),
                     u(S, C, 10000, 50000, handshake(2, KEY_S, KEY_C, wrap))])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "fastd", "confirmed")


def test_response_for_another_key_is_heuristic() -> None:
    v = one_verdict([u(C, S, 50000, 10000, handshake(1, KEY_C)),
                     u(S, C, 10000, 50000, handshake(2, KEY_S, os.urandom(32)))])
    assert (v.protocol, v.confidence) == ("fastd", "heuristic")


def test_init_alone_is_heuristic_and_data_may_follow() -> None:
    pkts = [u(C, S, 50000, 10000, handshake(1, KEY_C))]
    pkts += [u(C, S, 50000, 10000, bytes(1) + os.urandom(60)) for _ in range(3)]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("fastd", "heuristic")


def test_truncated_and_bad_tlvs_do_not_parse() -> None:
    good = handshake(1, KEY_C)
    assert parse(good) is not None and parse(L2TP + good) is not None
    for n in range(len(good)):
        parse(good[:n])  # never raises
    assert parse(good[:-1]) is None  # declared length exceeds the datagram
    assert parse(b"\x01\x00\x00\x05" + rec(0, b"\x09")) is None  # unknown handshake type
    assert parse(b"\x01\x00\x00\x05" + rec(6, b"\x01")) is None  # handshake type not first


@pytest.mark.parametrize("payload", [
    bytes(DNS(id=0x0100, rd=1, qd=DNSQR(qname="example.org"))),
    b"\xc3\x00\x00\x00\x01\x08" + os.urandom(1194),  # QUIC Initial
    b"\x01\x00\x00\x00" + os.urandom(144),  # WireGuard initiation
    b"\x01\x00" + os.urandom(80),  # random after the right first bytes
    b"\xc8\x03\x00\x0c" + os.urandom(60),  # L2TPv3 control, not fastd inside
    b"\x17\xfe\xfd" + os.urandom(60),  # DTLS application data
])
def test_near_misses(payload: bytes) -> None:
    for _, v in run_engine([u(C, S, 50000, 10000, payload), u(S, C, 10000, 50000, os.urandom(70))]):
        assert v.protocol != "fastd"


def test_fuzz_never_raises() -> None:
    rnd = random.Random(62)
    seeds = [handshake(1, KEY_C), handshake(2, KEY_S, KEY_C, True)]

    def raws() -> Iterator[bytes]:
        for i in range(2000):
            data = mutate(rnd, seeds)
            yield bytes(u(C, S, 1000 + i % 50, 10000, data) if i % 3 else u(S, C, 10000, 1000 + i % 50, data))

    assert feed_raw(["fastd"], raws()).classifier_errors == 0
