"""LINE call relay framing: heuristic at most, both ways too; near-misses."""

from __future__ import annotations

import os
import random

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.linecall import framed

C, S = "192.0.2.10", "198.51.100.7"
_R = random.Random(14)  # module constants: fixed bytes, whatever the import order
UP = b"\xdb\x64\x00\xb9\x06\x02" + _R.randbytes(866)
DOWN = b"\xd8\xee\x00\x66\x06\x02" + _R.randbytes(236)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_framing_is_heuristic_even_both_ways() -> None:
    assert framed(UP) and framed(DOWN) and not framed(UP[:149])
    v = one_verdict([u(C, S, 50835, 20610, UP), u(S, C, 20610, 50835, DOWN)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "line_call", "heuristic")


def test_near_misses() -> None:
    for p in (b"\xdc" + UP[1:], UP[:4] + b"\x06\x03" + UP[6:], UP[:100], os.urandom(300)):
        assert all(v.protocol != "line_call" for v in verdicts([u(C, S, 50835, 20610, p)]))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 50835, 20610, mutate(rnd, [UP, DOWN]))) for _ in range(400)]
    assert feed_raw(["linecall"], raws).classifier_errors == 0
