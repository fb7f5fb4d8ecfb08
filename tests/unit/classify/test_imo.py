"""IMO keep-alives: heuristic after short openers, never confirmed; near-misses."""

from __future__ import annotations

import os
import random

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.imo import keepalive

C, S = "192.0.2.10", "198.51.100.7"
KA10 = bytes.fromhex("0902dc9a020000000000")
KA11 = bytes.fromhex("000903219a020000000000")


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_keepalive_forms() -> None:
    assert keepalive(KA10) and keepalive(KA11)
    assert keepalive(KA10[:9] + b"\x01") is None and keepalive(b"\x09\x03" + KA10[2:]) is None


def test_call_opening_with_single_bytes_then_keepalive_is_heuristic() -> None:
    pkts = [u(C, S, 49207, 57604, b"\x07"), u(S, C, 57604, 49207, b"\x76"),
            u(S, C, 57604, 49207, os.urandom(107)), u(C, S, 49207, 57604, KA10)]
    v = one_verdict(pkts)
    assert (v.klass, v.protocol, v.confidence) == ("voip", "imo", "heuristic")
    assert one_verdict([u(C, S, 49207, 57604, KA11)]).confidence == "heuristic"


def test_near_misses() -> None:
    single_bytes_only = [u(C, S, 49207, 57604, b"\x07"), u(S, C, 57604, 49207, b"\x07")]
    late = [u(C, S, 49207, 57604, os.urandom(200)), u(S, C, 57604, 49207, KA11)]  # first datagram long
    for pkts in (single_bytes_only, late, [u(C, S, 49207, 57604, os.urandom(10))]):
        assert all(v.protocol != "imo" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 49207, 57604, mutate(rnd, [KA10, KA11, b"\x07"]))) for _ in range(400)]
    assert feed_raw(["imo"], raws).classifier_errors == 0
