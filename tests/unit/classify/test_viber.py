"""Viber relay: join/probe answered with the same prefix and session id is confirmed; nothing alone."""

from __future__ import annotations

import os
import random

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts

C, S = "192.0.2.10", "198.51.100.7"
_R = random.Random(14)  # module constants: fixed bytes, whatever the import order
SID = bytes.fromhex("ac19358c8f64e447")
JOIN = b"\xed\xf6\x01\x00\x05\x00" + SID + _R.randbytes(243)
JOINED = b"\xed\xf6\x0c\x00\x01\x00" + SID + _R.randbytes(62)
PROBE = b"\xed\xf6\x19\x00" + SID + _R.randbytes(22)
PROBED = b"\xed\xf6\x1a\x00" + SID + _R.randbytes(8)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_join_and_probe_answered_are_confirmed() -> None:
    for req, ans, port in ((JOIN, JOINED, 7985), (PROBE, PROBED, 7987)):
        v = one_verdict([u(C, S, 47171, port, req), u(S, C, port, 47171, ans)])
        assert (v.klass, v.protocol, v.confidence) == ("voip", "viber", "confirmed")


def test_alone_or_mismatched_is_not_flagged() -> None:
    assert one_verdict([u(C, S, 47171, 7985, JOIN)]).klass == "unknown"
    other_sid = JOINED[:6] + os.urandom(8) + JOINED[14:]
    other_prefix = b"\x05\xb8" + JOINED[2:]
    wrong_type = JOINED[:2] + b"\x1a" + JOINED[3:]
    for ans in (other_sid, other_prefix, wrong_type):
        assert one_verdict([u(C, S, 47171, 7985, JOIN), u(S, C, 7985, 47171, ans)]).klass == "unknown"


def test_random_traffic_is_not_viber() -> None:
    pkts = [u(C, S, 47171, 7985, os.urandom(64)), u(S, C, 7985, 47171, os.urandom(64))]
    assert all(v.protocol != "viber" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 47171, 7985, mutate(rnd, [JOIN, JOINED, PROBE, PROBED]))) for _ in range(400)]
    assert feed_raw(["viber"], raws).classifier_errors == 0
