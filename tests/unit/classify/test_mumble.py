"""Mumble: a ping request confirmed by the server's reply echoing its identifier; lone pings not flagged."""

from __future__ import annotations

import os
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts

C, S = "192.0.2.10", "198.51.100.7"
IDENT = bytes.fromhex("03d72000fa76287e")
PING = bytes(4) + IDENT
PONG = bytes.fromhex("00010304") + IDENT + struct.pack("!III", 0, 100, 72000)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


@pytest.mark.parametrize("port", [64738, 40000])
def test_ping_answered_is_confirmed(port: int) -> None:
    v = one_verdict([u(C, S, 50085, port, PING), u(S, C, port, 50085, PONG)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "mumble", "confirmed")
    assert "version 1.3.4, 0/100 users" in v.evidence[1]


def test_lone_ping_or_wrong_reply_is_not_flagged() -> None:
    assert one_verdict([u(C, S, 50085, 40000, PING)]).klass == "unknown"
    other = bytes.fromhex("00010304") + os.urandom(8) + struct.pack("!III", 0, 100, 72000)
    too_many = bytes.fromhex("00010304") + IDENT + struct.pack("!III", 101, 100, 72000)
    for reply in (other, too_many, PONG[:20]):
        assert one_verdict([u(C, S, 50085, 40000, PING), u(S, C, 40000, 50085, reply)]).klass == "unknown"


def test_zero_payloads_are_not_pings() -> None:
    pkts = [u(C, S, 50085, 40000, bytes(12)), u(S, C, 40000, 50085, bytes(24))]
    assert all(v.protocol != "mumble" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 50085, 64738, mutate(rnd, [PING, PONG]))) for _ in range(400)]
    assert feed_raw(["mumble"], raws).classifier_errors == 0
