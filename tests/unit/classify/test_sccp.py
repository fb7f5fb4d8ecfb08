"""SCCP/Skinny on TCP 2000: framing both ways confirms; other ports and framing errors are rejected."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.sccp import header

PHONE, CM = "192.0.2.10", "198.51.100.7"


def msg(mid: int, body: bytes = b"", version: int = 0) -> bytes:
    return struct.pack("<III", 4 + len(body), version, mid) + body


REGISTER = msg(0x0001, b"SEP001122334455\x00" + os.urandom(12) + b"\x00" * 12)
REGISTER_ACK = msg(0x0081, struct.pack("<I", 30) + b"M/D/Y\x00\x00\x00" + b"\x00" * 8)
KEEPALIVE = msg(0x0000)
KEEPALIVE_ACK = msg(0x0100)


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def test_header() -> None:
    assert header(REGISTER) == (len(REGISTER), 1)
    assert header(msg(0x0111, version=0x14)) == (12, 0x111)
    assert header(msg(0x0111, version=0x13)) is None  # unknown header version
    assert header(msg(0x5000)) is None  # message id far outside the known range
    assert header(REGISTER[:11]) is None


def test_register_and_ack_both_ways_is_confirmed() -> None:
    v = one_verdict([t(PHONE, CM, 50000, 2000, REGISTER), t(CM, PHONE, 2000, 50000, REGISTER_ACK),
                     t(PHONE, CM, 50000, 2000, KEEPALIVE), t(CM, PHONE, 2000, 50000, KEEPALIVE_ACK)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "sccp", "confirmed")
    assert "Register" in v.evidence[0]


def test_messages_split_and_merged_across_segments() -> None:
    stream = REGISTER + KEEPALIVE
    v = one_verdict([t(PHONE, CM, 50000, 2000, stream[:7]), t(PHONE, CM, 50000, 2000, stream[7:30]),
                     t(PHONE, CM, 50000, 2000, stream[30:]),
                     t(CM, PHONE, 2000, 50000, REGISTER_ACK + KEEPALIVE_ACK)])
    assert (v.protocol, v.confidence) == ("sccp", "confirmed")


def test_one_direction_is_heuristic() -> None:
    v = one_verdict([t(PHONE, CM, 50000, 2000, REGISTER)])
    assert (v.protocol, v.confidence) == ("sccp", "heuristic")


def test_other_ports_and_broken_framing_are_not_sccp() -> None:
    # Skinny framing on another port is not judged at all
    assert all(v.protocol != "sccp" for v in verdicts([t(PHONE, CM, 50000, 2001, REGISTER),
                                                       t(CM, PHONE, 2001, 50000, REGISTER_ACK)]))
    # port 2000 with something else on it (a bandwidth test, HTTP, TLS)
    for p in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\xa0\x01" + os.urandom(60),
              os.urandom(64)):
        pkts = [t(PHONE, CM, 50000, 2000, p), t(CM, PHONE, 2000, 50000, os.urandom(40))]
        assert all(v.protocol != "sccp" or v.confidence == "port" for v in verdicts(pkts))
    # a good first message followed by garbage withdraws the verdict
    vs = verdicts([t(PHONE, CM, 50000, 2000, REGISTER), t(PHONE, CM, 50000, 2000, os.urandom(40))])
    assert all(v.confidence != "heuristic" or v.protocol != "sccp" for v in vs)


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(8)
    raws = [bytes(t(PHONE, CM, 50000, 2000, mutate(rnd, [REGISTER, REGISTER_ACK]))) for _ in range(400)]
    assert feed_raw(["sccp"], raws).classifier_errors == 0
